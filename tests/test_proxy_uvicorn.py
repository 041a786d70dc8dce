"""End to end: a real uvicorn server with WebSocketProxyServer, a real WebSocketProxyClient."""

from __future__ import annotations

import asyncio
from collections import Counter
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi import FastAPI, WebSocket

from fastapi_busproxy import (
    BaseWorker,
    BusDataMessage,
    BusEndMessage,
    BusEndWorkerMessage,
    BusJobRequestMessage,
    BusMessage,
    CloseCode,
    JobError,
    JobEvent,
    JobFailedError,
    JSONMessageSerializer,
    WebSocketProxyClient,
    WebSocketProxyServer,
    WorkerRunner,
    WorkerUnreachableError,
    include_bus_proxy,
    runner_of,
)
from fastapi_busproxy.proxy import ReconnectPolicy
from tests.servers import running_uvicorn

pytestmark = pytest.mark.anyio

FAST_RETRY = ReconnectPolicy(initial_delay=0.05, max_delay=0.2)


class Assistant(BaseWorker):
    async def on_job_request(self, message: BusJobRequestMessage) -> dict[str, Any] | None:
        await self.send_job_update(message.job_id, {"progress": 0.5})
        await self.send_job_stream_start(message.job_id)
        for word in ("hello", "world"):
            await self.send_job_stream_data(message.job_id, {"text": word})
        # The end of the stream answers the job: its data is the response.
        await self.send_job_stream_end(
            message.job_id, {"answer": (message.payload or {}).get("q", 0) * 2}
        )
        return None


def make_server_app(local: BaseWorker, remote_name: str) -> tuple[FastAPI, WorkerRunner]:
    runner = WorkerRunner(name="server-runner")

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        async with runner:
            await runner.add_workers(local)
            yield

    app = FastAPI(lifespan=lifespan)
    counter = iter(range(1_000_000))

    @app.websocket("/ws")
    async def endpoint(websocket: WebSocket) -> None:
        proxy = WebSocketProxyServer(
            f"gateway-{next(counter)}",
            websocket=websocket,
            worker_name=local.name,
            remote_worker_name=remote_name,
        )
        await runner.add_workers(proxy)
        await proxy.wait()

    return app, runner


async def test_job_round_trip_client_to_server() -> None:
    app, _ = make_server_app(Assistant("assistant"), "voice")
    async with running_uvicorn(app) as server:
        runner = WorkerRunner(name="client-runner")
        voice = BaseWorker("voice")
        proxy = WebSocketProxyClient(
            "proxy",
            url=server.url("/ws"),
            remote_worker_name="assistant",
            local_worker_name="voice",
            active=True,
            reconnect=FAST_RETRY,
        )
        async with runner:
            await runner.add_workers(voice, proxy)
            events = []
            async with voice.job("assistant", name="ask", payload={"q": 21}, timeout=10) as job:
                async for event in job:
                    events.append((event.type, event.data))
            assert job.response == {"answer": 42}
            assert events == [
                (JobEvent.UPDATE, {"progress": 0.5}),
                (JobEvent.STREAM_START, None),
                (JobEvent.STREAM_DATA, {"text": "hello"}),
                (JobEvent.STREAM_DATA, {"text": "world"}),
                (JobEvent.STREAM_END, {"answer": 42}),
            ]
            assert proxy.subprotocol == "busproxy.v1.json"
            assert proxy.stats.messages_in >= 6


class Voice(BaseWorker):
    """A client-side worker that serves jobs too (readiness goes both ways)."""

    async def on_job_request(self, message: BusJobRequestMessage) -> dict[str, Any] | None:
        return {"heard": (message.payload or {}).get("say")}


async def test_job_round_trip_server_to_client() -> None:
    assistant = Assistant("assistant")
    app, server_runner = make_server_app(assistant, "voice")
    async with running_uvicorn(app) as server:
        runner = WorkerRunner(name="client-runner")
        proxy = WebSocketProxyClient(
            "proxy",
            url=server.url("/ws"),
            remote_worker_name="assistant",
            local_worker_name="voice",
            active=True,
            reconnect=FAST_RETRY,
        )
        async with runner:
            await runner.add_workers(Voice("voice"), proxy)
            # The server's worker waits until the client's worker is reported ready.
            async with assistant.job("voice", payload={"say": "hi"}, timeout=10) as job:
                pass
            assert job.response == {"heard": "hi"}
            assert (
                server_runner.registry.origin_of(
                    "voice",
                )
                is not None
            )
        # The client went away: its worker is no longer known on the server.
        proxies = [w for w in server_runner.workers if isinstance(w, WebSocketProxyServer)]
        for gateway in proxies:
            await asyncio.wait_for(gateway.wait(), 10)
        assert "voice" not in server_runner.registry


@pytest.mark.parametrize("how", ["end", "cancel"])
async def test_the_server_side_can_end_the_client_script(how: str) -> None:
    """An end request from the peer ends the proxy's session: in a script, the runner."""
    assistant = Assistant("assistant")
    app, server_runner = make_server_app(assistant, "voice")
    async with running_uvicorn(app) as server:
        runner = WorkerRunner(name="client-runner", handle_sigint=False)
        voice = BaseWorker("voice")
        proxy = WebSocketProxyClient(
            "proxy",
            url=server.url("/ws"),
            remote_worker_name="assistant",
            local_worker_name="voice",
            active=True,
            reconnect=FAST_RETRY,
        )
        await runner.add_workers(voice, proxy)
        script = asyncio.create_task(runner.run())
        try:
            await asyncio.wait_for(server_runner.registry.wait_ready("voice"), 10)
            if how == "end":
                await assistant.end_worker("voice", "the call is over")
            else:
                await assistant.cancel_worker("voice", "the call is over")
            await asyncio.wait_for(asyncio.shield(script), 5)
        finally:
            if not script.done():  # the bug: cancelling run() still stops the runner
                script.cancel()
                await asyncio.wait([script])
        assert voice.finished
        assert proxy.finished
        # The server's side goes on: its worker, its runner.
        assert assistant.state.value == "running"
        assert server_runner.state.value == "running"


@dataclass(kw_only=True)
class Note(BusDataMessage):
    n: int


class Recorder(BaseWorker):
    """Records the Notes it receives; ``reached(count)`` waits for that many."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.notes: list[int] = []
        self._changed = asyncio.Event()

    async def on_bus_message(self, message: BusMessage) -> None:
        if isinstance(message, Note):
            self.notes.append(message.n)
            self._changed.set()
        else:
            await super().on_bus_message(message)

    async def reached(self, count: int) -> None:
        while len(self.notes) < count:
            self._changed.clear()
            await self._changed.wait()


class Events:
    """Counts proxy events and lets a test wait for the n-th one."""

    def __init__(self, proxy: BaseWorker, *names: str) -> None:
        self.seen: dict[str, list[tuple[Any, ...]]] = {name: [] for name in names}
        self._changed = asyncio.Event()
        for name in names:
            proxy.add_event_handler(name, self._recorder(name))

    def _recorder(self, name: str) -> Any:
        async def record(worker: Any, *args: Any) -> None:
            self.seen[name].append(args)
            self._changed.set()

        return record

    async def wait(self, name: str, count: int = 1) -> None:
        while len(self.seen[name]) < count:
            self._changed.clear()
            await self._changed.wait()


async def test_reconnect_flushes_outbox_in_order_after_server_restart() -> None:
    first = Recorder("assistant")
    app, _ = make_server_app(first, "voice")
    client_runner = WorkerRunner(name="client-runner")
    voice = BaseWorker("voice")
    async with running_uvicorn(app) as server:
        port = server.port
        proxy = WebSocketProxyClient(
            "proxy",
            url=server.url("/ws"),
            remote_worker_name="assistant",
            local_worker_name="voice",
            active=True,
            reconnect=FAST_RETRY,
        )
        events = Events(proxy, "on_connected", "on_disconnected", "on_reconnecting")
        await client_runner.start()
        await client_runner.add_workers(voice, proxy)
        await asyncio.wait_for(events.wait("on_connected"), 10)
        await voice.send_bus_message(Note(source="voice", target="assistant", n=-1))
        await asyncio.wait_for(first.reached(1), 10)
    # The server is gone: the client notices, and keeps trying.
    await asyncio.wait_for(events.wait("on_disconnected"), 10)
    assert proxy.close_info is not None
    assert proxy.close_info.code in (1001, 1012)
    assert "assistant" not in client_runner.registry
    await asyncio.wait_for(events.wait("on_reconnecting", 2), 10)
    for n in range(200):
        await voice.send_bus_message(Note(source="voice", target="assistant", n=n))

    second = Recorder("assistant")
    app2, _ = make_server_app(second, "voice")
    async with running_uvicorn(app2, port=port):
        await asyncio.wait_for(second.reached(200), 10)
        assert second.notes == list(range(200))
        assert proxy.stats.reconnects == 1
        assert proxy.stats.dropped == 0
        await asyncio.wait_for(client_runner.registry.wait_ready("assistant"), 10)
        await client_runner.end()
    assert proxy.queued == 0


async def test_bad_frames_from_raw_client_over_uvicorn() -> None:
    import websockets

    codec = JSONMessageSerializer()
    recorder = Recorder("assistant")
    app, server_runner = make_server_app(recorder, "voice")
    bad_frames: list[str | bytes] = [
        "a text frame",
        b"{not json",
        b'{"__type__":"subprocess.Popen","__data__":{"args":["sh"]}}',
        b'{"__type__":"pydantic.main.BaseModel","__data__":{}}',
        codec.serialize(Note(source="intruder", target="assistant", n=666)),
        codec.serialize(Note(source="voice", target="billing", n=667)),
        codec.serialize(BusEndMessage(source="intruder")),
        codec.serialize(BusEndWorkerMessage(source="voice", target="billing")),
    ]
    async with running_uvicorn(app) as server:
        async with websockets.connect(server.url("/ws"), compression=None) as ws:
            registry = codec.deserialize(await ws.recv())
            assert type(registry).__name__ == "BusWorkerRegistryMessage"
            for n, frame in enumerate(bad_frames):
                await ws.send(frame)
                await ws.send(codec.serialize(Note(source="voice", target="assistant", n=n)))
            await asyncio.wait_for(recorder.reached(len(bad_frames)), 10)
            assert recorder.notes == list(range(len(bad_frames)))
            gateway = next(w for w in server_runner.workers if isinstance(w, WebSocketProxyServer))
            assert gateway.stats.rejected == len(bad_frames)
            assert gateway.connected

            # The peer's own end is no bad frame: it ends its connection, and only that.
            await ws.send(codec.serialize(BusEndMessage(source="voice", reason="bye")))

            async def read_until_closed() -> None:
                while True:
                    await asyncio.wait_for(ws.recv(), 10)

            with pytest.raises(websockets.ConnectionClosed) as info:
                await read_until_closed()
            assert info.value.rcvd is not None
            assert info.value.rcvd.code == CloseCode.GOING_AWAY
            await asyncio.wait_for(gateway.wait(), 10)
        assert server_runner.state.value == "running"
        assert recorder.state.value == "running"


async def test_slow_reader_is_cut_off_by_policy_with_bounded_memory() -> None:
    """A client that never reads: the server's queue stays bounded and the link is closed."""
    import websockets

    @dataclass(kw_only=True)
    class Blob(BusDataMessage):
        data: str

    class Flooder(BaseWorker):
        pass

    flooder = Flooder("assistant")
    runner = WorkerRunner(name="server-runner")

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        async with runner:
            await runner.add_workers(flooder)
            yield

    app = FastAPI(lifespan=lifespan)
    proxies: list[WebSocketProxyServer] = []

    @app.websocket("/ws")
    async def endpoint(websocket: WebSocket) -> None:
        proxy = WebSocketProxyServer(
            "gateway",
            websocket=websocket,
            worker_name="assistant",
            remote_worker_name="voice",
            send_queue_size=50,
            send_timeout=0.5,
        )
        proxies.append(proxy)
        await runner.add_workers(proxy)
        await proxy.wait()

    payload = "x" * 65_536
    async with running_uvicorn(app) as server:
        # max_queue=1 and a tiny read limit: the client stops reading from the socket at once.
        async with websockets.connect(
            server.url("/ws"), compression=None, max_queue=1, max_size=None, close_timeout=1
        ) as ws:
            await asyncio.wait_for(runner.registry.wait_ready("gateway"), 10)
            gateway = proxies[0]
            events = Events(gateway, "on_client_disconnected")
            peak = 0
            sent = 0
            # Bounded: at most 2,000 x 64 KiB are offered; the link must give up long before.
            while gateway.connected and sent < 2_000:
                await flooder.send_bus_message(
                    Blob(source="assistant", target="voice", data=payload)
                )
                sent += 1
                peak = max(peak, gateway.queued)
            await asyncio.wait_for(events.wait("on_client_disconnected"), 10)
            assert gateway.close_info is not None
            assert gateway.close_info.code == CloseCode.PEER_TOO_SLOW
            assert peak <= 50
            assert sent < 2_000
            del ws


async def test_a_peer_that_reads_nothing_is_cut_off_without_waiting_for_its_close_frame() -> None:
    """A raw TCP peer that completes the handshake and then never reads: the close frame
    cannot be written either, and the proxy still finishes (on_client_disconnected) within
    about send_timeout, not after the ASGI server's own closing-handshake timeouts."""
    import base64
    import os
    import socket

    @dataclass(kw_only=True)
    class Blob(BusDataMessage):
        data: str

    flooder = BaseWorker("assistant")
    runner = WorkerRunner(name="server-runner")

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        async with runner:
            await runner.add_workers(flooder)
            yield

    app = FastAPI(lifespan=lifespan)
    proxies: list[WebSocketProxyServer] = []

    @app.websocket("/ws")
    async def endpoint(websocket: WebSocket) -> None:
        proxy = WebSocketProxyServer(
            "gateway",
            websocket=websocket,
            worker_name="assistant",
            remote_worker_name="voice",
            send_queue_size=1_000,
            send_timeout=0.5,
        )
        proxies.append(proxy)
        await runner.add_workers(proxy)
        await proxy.wait()

    async with running_uvicorn(app) as server:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101")
        reader._transport.pause_reading()  # type: ignore[attr-defined]  # read nothing more
        try:
            await asyncio.wait_for(runner.registry.wait_ready("gateway"), 10)
            gateway = proxies[0]
            events = Events(gateway, "on_client_disconnected")
            # 200 x 64 KiB: far more than the socket buffers hold, far less than the send
            # queue: the write that gets stuck, not a full queue, is what closes the link.
            for _ in range(200):
                if not gateway.connected:
                    break
                await flooder.send_bus_message(
                    Blob(source="assistant", target="voice", data="x" * 65_536)
                )
            # uvicorn's own closing handshake waits 10 s for the close frame to be written:
            # the proxy must not.
            await asyncio.wait_for(events.wait("on_client_disconnected"), 5)
            assert gateway.close_info is not None
            assert gateway.close_info.code == CloseCode.PEER_TOO_SLOW
        finally:
            writer.transport.abort()


async def test_msgpack_links_negotiate_their_subprotocol_and_carry_bytes() -> None:
    from fastapi_busproxy.serializers import MsgpackMessageSerializer
    from tests.test_serializer_msgpack import Audio

    received: list[bytes] = []

    class AudioSink(Recorder):
        async def on_bus_message(self, message: BusMessage) -> None:
            if isinstance(message, Audio):
                received.append(message.pcm)
                self.notes.append(len(received))
                self._changed.set()
            else:
                await super().on_bus_message(message)

    sink = AudioSink("assistant")
    runner = WorkerRunner(name="server-runner")

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        async with runner:
            await runner.add_workers(sink)
            yield

    app = FastAPI(lifespan=lifespan)

    @app.websocket("/ws")
    async def endpoint(websocket: WebSocket) -> None:
        proxy = WebSocketProxyServer(
            "gateway",
            websocket=websocket,
            worker_name="assistant",
            remote_worker_name="voice",
            serializer=MsgpackMessageSerializer(),
        )
        await runner.add_workers(proxy)
        await proxy.wait()

    async with running_uvicorn(app) as server:
        client_runner = WorkerRunner(name="client-runner")
        voice = BaseWorker("voice")
        proxy = WebSocketProxyClient(
            "proxy",
            url=server.url("/ws"),
            remote_worker_name="assistant",
            local_worker_name="voice",
            serializer=MsgpackMessageSerializer(),
            active=True,
            reconnect=FAST_RETRY,
        )
        async with client_runner:
            await client_runner.add_workers(voice, proxy)
            await asyncio.wait_for(client_runner.registry.wait_ready("assistant"), 10)
            frames = [bytes([n]) * 640 for n in range(20)]
            for pcm in frames:
                await voice.send_bus_message(Audio(source="voice", target="assistant", pcm=pcm))
            await asyncio.wait_for(sink.reached(20), 10)
            assert proxy.subprotocol == "busproxy.v1.msgpack"
        assert received == frames


class Echoer(Recorder):
    """Records the Notes it receives and sends each one back to its source."""

    async def on_bus_message(self, message: BusMessage) -> None:
        await super().on_bus_message(message)
        if isinstance(message, Note):
            await self.send_bus_message(Note(source=self.name, target=message.source, n=message.n))


async def test_a_socket_the_app_accepted_itself_is_upgraded_in_band_for_our_client() -> None:
    """The reference page's form (``await websocket.accept()``, no subprotocol chosen) talking
    to our client: framed and batched both ways after an in-band upgrade, nothing misread
    around the switch, order kept."""
    assistant = Echoer("assistant")
    runner = WorkerRunner(name="server-runner")

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        async with runner:
            await runner.add_workers(assistant)
            yield

    app = FastAPI(lifespan=lifespan)
    proxies: list[WebSocketProxyServer] = []

    @app.websocket("/ws")
    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        proxy = WebSocketProxyServer(
            "gateway", websocket=websocket, worker_name="assistant", remote_worker_name="voice"
        )
        proxies.append(proxy)
        await runner.add_workers(proxy)
        await proxy.wait()

    count = 500
    async with running_uvicorn(app) as server:
        client_runner = WorkerRunner(name="client-runner")
        voice = Recorder("voice")
        proxy = WebSocketProxyClient(
            "proxy",
            url=server.url("/ws"),
            remote_worker_name="assistant",
            local_worker_name="voice",
            active=True,
            reconnect=FAST_RETRY,
        )
        async with client_runner:
            await client_runner.add_workers(voice, proxy)
            await asyncio.wait_for(client_runner.registry.wait_ready("assistant"), 10)
            for n in range(count):  # a burst: most of it queues behind the first write
                await voice.send_bus_message(Note(source="voice", target="assistant", n=n))
            await asyncio.wait_for(voice.reached(count), 10)
            gateway = proxies[0]
            assert assistant.notes == list(range(count))
            assert voice.notes == list(range(count))
            assert proxy.subprotocol is None  # the handshake agreed on none...
            assert gateway.subprotocol == "busproxy.v1.json"  # ...the link upgraded in band
            # Batched both ways, and nothing refused on either side.
            assert proxy.stats.frames_out < proxy.stats.messages_out
            assert gateway.stats.frames_out < gateway.stats.messages_out
            assert proxy.stats.rejected == gateway.stats.rejected == 0


def assistant_app(
    form: str,
    *,
    proxy_class: type[WebSocketProxyServer] = WebSocketProxyServer,
    wait: str = "wait_connection",
    session_workers: Any = None,
    **proxy_options: Any,
) -> FastAPI:
    """An app with an "assistant" worker and a route ``/ws/{caller}``: the plugin's, or the
    reference page's hand-wired endpoint (one proxy per connection, awaited with ``wait``)."""
    runner = WorkerRunner(name="server-runner", handle_sigint=False)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        if form == "hand-wired":
            async with runner:
                await runner.add_workers(BaseWorker("assistant"))
                yield
        else:
            await runner_of(app).add_workers(BaseWorker("assistant"))
            yield

    app = FastAPI(lifespan=lifespan)
    if form == "hand-wired":

        @app.websocket("/ws/{caller}")
        async def endpoint(websocket: WebSocket, caller: str) -> None:
            await websocket.accept()
            proxy = proxy_class(
                f"gateway:{caller}",
                websocket=websocket,
                worker_name="assistant",
                remote_worker_name=caller,
                **proxy_options,
            )
            await runner.add_workers(proxy)
            await getattr(proxy, wait)()

    else:
        include_bus_proxy(
            app,
            "/ws/{caller}",
            "assistant",
            remote_worker_name=lambda session: session.path_params["caller"],
            session_workers=session_workers,
        )
    return app


def _tasks_by_coroutine() -> Counter[str]:
    return Counter(task.get_coro().__qualname__ for task in asyncio.all_tasks())  # type: ignore[union-attr]


@pytest.mark.parametrize("form", ["include_bus_proxy", "hand-wired"])
async def test_an_idle_server_connection_costs_one_task_besides_the_endpoints(form: str) -> None:
    """The endpoint's task reads (it runs the link); the proxy's bus delivery task writes
    what it forwards, and is the only task an idle connection adds, as the reference's
    worker is. (A writer task exists only while control frames or held messages wait.)"""
    from websockets.asyncio.client import connect

    app = assistant_app(form, resume_grace=30)
    count = 5
    async with running_uvicorn(app) as server:
        before = _tasks_by_coroutine()
        clients = []
        try:
            for i in range(count):
                client = await connect(
                    server.url(f"/ws/voice{i}"),
                    subprotocols=["busproxy.v2.json", "busproxy.v1.json"],  # type: ignore[list-item]
                    ping_interval=None,
                )
                clients.append(client)
                await asyncio.wait_for(client.recv(), 10)  # the server's first frame: it is up
            # The writers of the opening frames end once those are written: a bounded
            # number of turns of the loop, no clock.
            for _ in range(1000):
                if "Link._write_queued" not in _tasks_by_coroutine():
                    break
                await asyncio.sleep(0)
            added = dict(_tasks_by_coroutine() - before)
            assert added == {
                "WebSocketsSansIOProtocol.run_asgi": count,  # uvicorn's: the endpoint's task
                "Subscription._run": count,
            }, added
        finally:
            for client in clients:
                await client.close()


async def test_a_refused_duplicate_client_backs_off_and_gives_up() -> None:
    """A second client under a connected client's name is refused (4001) each time: each
    refusal is one more failed attempt, so the waits grow and max_attempts ends it, with the
    cause."""

    app = assistant_app("include_bus_proxy")  # the route /ws/voice expects "voice"
    async with running_uvicorn(app) as server:
        first_runner = WorkerRunner(name="first", handle_sigint=False)
        first = WebSocketProxyClient(
            "proxy",
            url=server.url("/ws/voice"),
            remote_worker_name="assistant",
            local_worker_name="voice",
            active=True,
        )
        second_runner = WorkerRunner(name="second", handle_sigint=False)
        second = WebSocketProxyClient(
            "proxy",
            url=server.url("/ws/voice"),
            remote_worker_name="assistant",
            local_worker_name="voice",
            active=True,
            reconnect=ReconnectPolicy(initial_delay=0.01, max_delay=1.0, jitter=0, max_attempts=4),
        )
        attempts: list[int] = []
        gave_up: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

        @second.event_handler("on_reconnecting")
        async def reconnecting(proxy: Any, attempt: int, delay: float) -> None:
            attempts.append(attempt)

        @second.event_handler("on_gave_up")
        async def on_gave_up(proxy: Any, error: BaseException) -> None:
            gave_up.set_result(error)

        async with first_runner, second_runner:
            await first_runner.add_workers(BaseWorker("voice"), first)
            await first_runner.registry.wait_ready("assistant", 10)
            await second_runner.add_workers(BaseWorker("voice"), second)
            error = await asyncio.wait_for(gave_up, 10)
        assert attempts == [1, 2, 3]
        assert "4001" in str(error)
        assert first.stats.reconnects == 0  # the connected client was never disturbed


class SlowToStop(BaseWorker):
    """A session worker whose clean-up takes a moment (a flush, a goodbye to a backend)."""

    async def stop(self) -> None:
        await asyncio.sleep(0.05)  # the work itself, not a wait for something
        await super().stop()


class SlowProxy(WebSocketProxyServer):
    async def stop(self) -> None:
        await super().stop()
        await asyncio.sleep(0.05)  # the same, in the hand-wired form


@pytest.mark.parametrize("form", ["include_bus_proxy", "hand-wired"])
async def test_a_client_that_reconnects_at_once_is_served_every_time(form: str) -> None:
    """A client that closes and comes back at once, 30 times, while the last session is still
    stopping (slowly): each connection is served (the readiness announcement comes first), never
    refused as a duplicate (4001, HTTP 409) nor dropped."""
    from websockets.asyncio.client import connect

    app = assistant_app(
        form,
        proxy_class=SlowProxy,
        wait="wait",
        session_workers=lambda session: [SlowToStop("helper")],
    )
    served = 0
    async with running_uvicorn(app) as server:
        for _ in range(30):
            async with connect(server.url("/ws/voice"), ping_interval=None) as ws:
                first = await asyncio.wait_for(ws.recv(), 10)  # closed (4001) if refused
                assert b'"assistant"' in first  # type: ignore[operator]
                served += 1
    assert served == 30


@pytest.mark.parametrize(
    ("local_name", "remote_name"),
    [("vocie", "assistant"), ("voice", "assitant")],
    ids=["local_worker_name", "remote_worker_name"],
)
async def test_worker_names_that_do_not_match_fail_a_job_at_once_with_both_names(
    local_name: str, remote_name: str
) -> None:
    """A name set differently on the two sides: the side that sees the other's announcement
    closes with 4003 naming both, the client stops retrying, and a job for the remote worker
    fails at once with that reason (not after its timeout)."""

    app = assistant_app("include_bus_proxy")  # the route /ws/voice expects "voice"
    async with running_uvicorn(app) as server:
        runner = WorkerRunner(name="client-runner", handle_sigint=False)
        voice = BaseWorker(local_name)
        proxy = WebSocketProxyClient(
            "proxy",
            url=server.url("/ws/voice"),
            remote_worker_name=remote_name,
            local_worker_name=local_name,
            active=True,
        )
        events = Events(proxy, "on_gave_up", "on_reconnecting")
        async with runner:
            await runner.add_workers(voice, proxy)

            async def run_job() -> None:
                async with voice.job(remote_name, name="ask", timeout=60):
                    pass

            # The job's own timeout is 60 s: failing at all inside 10 s is the point. Before
            # the mismatch is seen, the remote worker may look ready and the job go out: then
            # it ends as if the worker had answered with an error.
            with pytest.raises(JobError) as caught:
                await asyncio.wait_for(run_job(), 10)
            await asyncio.wait_for(events.wait("on_gave_up"), 10)
        assert isinstance(caught.value, (WorkerUnreachableError, JobFailedError))
        message = str(caught.value)
        assert "'voice'" in message  # what the server expects...
        assert repr(local_name) in message or repr(remote_name) in message  # ...and what it got
        assert proxy.close_info is not None
        assert proxy.close_info.code == CloseCode.WRONG_WORKER
        assert events.seen["on_reconnecting"] == []
