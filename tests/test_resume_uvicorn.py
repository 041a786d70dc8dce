"""Resumable sessions end to end: a real uvicorn server (``include_bus_proxy``), our client, and a
TCP relay between them that cuts the connection while both sides send numbered streams.

Counted on each side: messages lost, delivered twice, and delivered out of order. Loops are
bounded in count; the only waits are for events (under timeouts); only 127.0.0.1 is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi import FastAPI, WebSocket

from bench.relay import Break, running_relay
from fastapi_busproxy import (
    BaseWorker,
    BusDataMessage,
    BusMessage,
    WebSocketProxyClient,
    WebSocketProxyServer,
    WorkerRunner,
    configure_bus,
    include_bus_proxy,
    runner_of,
)
from fastapi_busproxy.proxy import ReconnectPolicy
from fastapi_busproxy.proxy.resume import MIN_REPLAY_BUFFER
from fastapi_busproxy.settings import BusProxySettings
from tests.servers import running_uvicorn

pytestmark = pytest.mark.anyio

FAST_RETRY = ReconnectPolicy(initial_delay=0.02, max_delay=0.1)
PER_ROUND = 100  # messages each side sends between two cuts
MODES: list[tuple[Break, Break]] = [
    ("fin", "fin"),
    ("rst", "rst"),
    ("fin", None),  # the server's side stays open: the resumed connection replaces it
    ("rst", "fin"),
]
# Once more with the client's side left open: its keepalive finds the link dead (then
# websockets waits its close timeout, 5 s, for a close that cannot come).
CUTS = MODES * 5 + [(None, "rst")]


@dataclass(kw_only=True)
class Numbered(BusDataMessage):
    n: int = 0


class Counter(BaseWorker):
    """Records the numbers it receives, in order; wakes a waiter when it has ``total``."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.received: list[int] = []
        self.total = 0
        self.complete = asyncio.Event()

    async def on_bus_message(self, message: BusMessage) -> None:
        if isinstance(message, Numbered):
            self.received.append(message.n)
            if self.total and len(set(self.received)) >= self.total:
                self.complete.set()
        await super().on_bus_message(message)

    async def send_numbered(self, target: str, numbers: range) -> None:
        for n in numbers:
            await self.send_bus_message(Numbered(source=self.name, target=target, n=n))
            if n % 10 == 9:
                await asyncio.sleep(0.001)  # a pace: the cuts land while messages fly

    def report(self, total: int) -> dict[str, int]:
        got = self.received
        return {
            "lost": len(set(range(total)) - set(got)),
            "duplicated": len(got) - len(set(got)),
            "reordered": sum(1 for a, b in itertools.pairwise(got) if b < a),
        }


def make_app(server_counter: Counter, **options: Any) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runner_of(app).add_workers(server_counter)
        yield

    app = FastAPI(lifespan=lifespan)
    include_bus_proxy(app, "/ws", "counter", remote_worker_name="client", **options)
    return app


def make_hand_wired_app(server_counter: Counter, proxies: list[WebSocketProxyServer]) -> FastAPI:
    """The reference page's form: the app accepts the socket itself (no subprotocol chosen)
    and makes a proxy per connection under one name; ``resume_grace`` is the one addition."""
    runner = WorkerRunner(name="server-runner", handle_sigint=False)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with runner:
            await runner.add_workers(server_counter)
            yield

    app = FastAPI(lifespan=lifespan)

    @app.websocket("/ws")
    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        proxy = WebSocketProxyServer(
            "gateway",
            websocket=websocket,
            worker_name="counter",
            remote_worker_name="client",
            resume_grace=30,
        )
        proxies.append(proxy)
        await runner.add_workers(proxy)
        await proxy.wait_connection()

    return app


class Client:
    def __init__(self, url: str) -> None:
        self.runner = WorkerRunner(name="client-runner", handle_sigint=False)
        self.counter = Counter("client")
        self.proxy = WebSocketProxyClient(
            "link",
            url=url,
            remote_worker_name="counter",
            local_worker_name="client",
            active=True,
            reconnect=FAST_RETRY,
            # A half-open connection is found dead by keepalive: well within the grace period.
            ping_interval=0.5,
            ping_timeout=0.5,
        )
        self.resumed = 0
        self.lost: list[int] = []
        self.session_lost = asyncio.Event()
        self.disconnected = asyncio.Event()

        @self.proxy.event_handler("on_disconnected")
        async def disconnected(proxy: WebSocketProxyClient, websocket: Any) -> None:
            self.disconnected.set()

        @self.proxy.event_handler("on_resumed")
        async def resumed(proxy: WebSocketProxyClient) -> None:
            self.resumed += 1

        @self.proxy.event_handler("on_session_lost")
        async def lost(proxy: WebSocketProxyClient, count: int) -> None:
            self.lost.append(count)
            self.session_lost.set()

    async def __aenter__(self) -> Client:
        await self.runner.start()
        await self.runner.add_workers(self.counter, self.proxy)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cancel("test over")


async def strand(relay: Any) -> None:
    """Cut the connection (RST both sides) and refuse the client's reconnections."""
    relay.refuse = True
    relay.cut("rst", "rst")
    await relay.wait_refused(1)


async def wait_ready(runner: WorkerRunner, name: str, timeout: float = 10.0) -> None:
    await runner.registry.wait_ready(name, timeout)


FORMS = ["include_bus_proxy", "hand-wired"]


def make_form(form: str, counter: Counter, proxies: list[WebSocketProxyServer]) -> FastAPI:
    return make_hand_wired_app(counter, proxies) if form == "hand-wired" else make_app(counter)


def gateway_of(form: str, app: FastAPI, proxies: list[WebSocketProxyServer]) -> Any:
    """The proxy that holds the session (the first connection's, in the hand-wired form)."""
    return proxies[0] if form == "hand-wired" else runner_of(app).get_worker("gateway:client")


@pytest.mark.parametrize("form", FORMS)
async def test_cut_connections_lose_nothing_duplicate_nothing_reorder_nothing(form: str) -> None:
    server_counter = Counter("counter")
    total = PER_ROUND * (len(CUTS) * 2 + 1)
    server_counter.total = total
    proxies: list[WebSocketProxyServer] = []
    app = make_form(form, server_counter, proxies)
    async with running_uvicorn(app) as server, running_relay(server.port) as relay:
        async with Client(relay.url("/ws")) as client:
            client.counter.total = total
            await relay.wait_connection(1)
            await wait_ready(client.runner, "counter")
            sent = 0
            for i, (client_side, server_side) in enumerate(CUTS):
                # Both send; the relay cuts in the middle of a round, while messages fly.
                half = range(sent, sent + PER_ROUND)
                rest = range(sent + PER_ROUND, sent + 2 * PER_ROUND)
                await asyncio.gather(
                    client.counter.send_numbered("counter", half),
                    server_counter.send_numbered("client", half),
                )
                assert relay.cut(client_side, server_side) >= 1
                await asyncio.gather(
                    client.counter.send_numbered("counter", rest),
                    server_counter.send_numbered("client", rest),
                )
                sent += 2 * PER_ROUND
                await relay.wait_connection(i + 2)
            last = range(sent, total)
            await asyncio.gather(
                client.counter.send_numbered("counter", last),
                server_counter.send_numbered("client", last),
            )
            # Under a timeout: on failure, the counts below say what went missing.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(client.counter.complete.wait(), server_counter.complete.wait()),
                    30,
                )
            outcome = {
                "client->server": server_counter.report(total),
                "server->client": client.counter.report(total),
            }
            clean = {"lost": 0, "duplicated": 0, "reordered": 0}
            assert outcome == {"client->server": clean, "server->client": clean}
            assert client.lost == []
            assert client.resumed >= len(CUTS) - 1
            assert client.proxy.stats.resumes == client.resumed
            assert client.proxy.stats.sessions_lost == 0
            if form == "hand-wired":
                # One proxy kept the session; each reconnection's proxy followed it, and the
                # link was upgraded in band every time.
                assert proxies[0].stats.resumes == client.resumed
                assert all(p.subprotocol == "busproxy.v2.json" for p in proxies[:1])
                assert client.proxy.subprotocol is None


@pytest.mark.parametrize("form", FORMS)
async def test_a_restarted_server_is_a_lost_session_reported_with_its_count(form: str) -> None:
    first = Counter("counter")
    proxies: list[WebSocketProxyServer] = []
    app = make_form(form, first, proxies)
    async with running_uvicorn(app) as server, running_relay(server.port) as relay:
        async with Client(relay.url("/ws")) as client:
            await wait_ready(client.runner, "counter")
            first.total = 50
            await client.counter.send_numbered("counter", range(50))
            await asyncio.wait_for(first.complete.wait(), 10)
            await asyncio.wait_for(client.proxy.wait_acknowledged(), 10)
            assert client.proxy.unacknowledged == 0
            # The server's machine goes away; a new server comes up behind the same address.
            # What the client writes before it notices is lost with the old session.
            relay.cut("rst", "rst")
            second = Counter("counter")
            async with running_uvicorn(make_form(form, second, [])) as restarted:
                relay.target_port = restarted.port
                await client.counter.send_numbered("counter", range(50, 100))
                await asyncio.wait_for(client.session_lost.wait(), 10)
                await wait_ready(client.runner, "counter")
                second.total = 100 - 50 - client.lost[0]
                await asyncio.wait_for(second.complete.wait(), 10)
                await asyncio.wait_for(client.proxy.wait_acknowledged(), 10)
    assert first.received == list(range(50))
    # The count is exact: what was written to the old connection and never acknowledged...
    [lost] = client.lost
    assert client.proxy.stats.sessions_lost == 1
    assert client.proxy.stats.lost_unacknowledged == lost
    # ...and everything sent after it arrives, once, in order.
    assert second.received == list(range(50 + lost, 100))


async def test_a_session_whose_grace_period_passed_is_given_up_and_counted() -> None:
    server_counter = Counter("counter")
    app = make_app(server_counter, resume_grace=0.5)
    async with running_uvicorn(app) as server, running_relay(server.port) as relay:
        async with Client(relay.url("/ws")) as client:
            await wait_ready(client.runner, "counter")
            gateway = runner_of(app).get_worker("gateway:client")
            assert isinstance(gateway, WebSocketProxyServer)
            # The client cannot come back: the server keeps what it sends meanwhile...
            await strand(relay)
            await server_counter.send_numbered("client", range(10))
            # ...until the grace period is over: then it gives the session up, and says so.
            await asyncio.wait_for(gateway.wait(), 10)
            assert gateway.stats.sessions_lost == 1
            assert gateway.stats.dropped == 10
            relay.refuse = False
            await asyncio.wait_for(client.session_lost.wait(), 10)
            assert client.lost == [0]  # the client had nothing unacknowledged
            await wait_ready(client.runner, "counter")
            client.counter.total = 5
            await server_counter.send_numbered("client", range(10, 15))
            await asyncio.wait_for(client.counter.complete.wait(), 10)
    assert client.counter.received == list(range(10, 15))


async def test_a_client_that_leaves_on_purpose_ends_its_session() -> None:
    server_counter = Counter("counter")
    app = make_app(server_counter)
    async with running_uvicorn(app) as server:
        async with Client(server.url("/ws")) as client:
            await wait_ready(client.runner, "counter")
            first = client.proxy.session_id
            gateway = runner_of(app).get_worker("gateway:client")
            assert isinstance(gateway, WebSocketProxyServer)
            assert first is not None
            assert gateway.session_id == first
            await client.counter.deactivate_worker("link")
            # Closed with 1000: the server ends the session at once (no grace period)...
            await asyncio.wait_for(gateway.wait(), 10)
            await asyncio.wait_for(client.disconnected.wait(), 10)
            assert gateway.stats.sessions_lost == 0
            assert client.proxy.session_id is None
            # ...and the next connection starts a new one, with no loss to report.
            await client.counter.activate_worker("link")
            await wait_ready(client.runner, "counter")
            assert client.proxy.session_id not in (None, first)
            assert client.lost == []
            assert client.resumed == 0


@pytest.mark.parametrize("form", FORMS)
async def test_a_new_client_replaces_a_session_waiting_for_its_client(form: str) -> None:
    server_counter = Counter("counter")
    proxies: list[WebSocketProxyServer] = []
    # include_bus_proxy: duplicate_policy "refuse", for connected sessions; hand-wired: one
    # proxy name for every connection.
    app = make_form(form, server_counter, proxies)
    async with running_uvicorn(app) as server, running_relay(server.port) as relay:
        async with Client(relay.url("/ws")) as gone:
            await wait_ready(gone.runner, "counter")
            gateway = gateway_of(form, app, proxies)
            assert isinstance(gateway, WebSocketProxyServer)
            await strand(relay)
            # Another process (no session to resume) connects under the same name.
            async with Client(server.url("/ws")) as newcomer:
                await asyncio.wait_for(gateway.wait(), 10)
                await wait_ready(newcomer.runner, "counter")
                newcomer.counter.total = 3
                await server_counter.send_numbered("client", range(3))
                await asyncio.wait_for(newcomer.counter.complete.wait(), 10)
                assert newcomer.counter.received == [0, 1, 2]
                assert gateway.stats.sessions_lost == 1


@pytest.mark.parametrize("form", FORMS)
async def test_a_session_waiting_for_its_client_does_not_hold_the_server_shutdown(
    form: str,
) -> None:
    """Served as ``uvicorn app:app`` does (no close of the links before shutdown): the
    endpoint of a dead connection has returned, so uvicorn's shutdown does not wait out the
    30 s grace period (running_uvicorn gives it 15 s); the session ends with the app."""
    server_counter = Counter("counter")
    proxies: list[WebSocketProxyServer] = []
    app = make_form(form, server_counter, proxies)
    async with running_uvicorn(app, plain=True) as server, running_relay(server.port) as relay:
        async with Client(relay.url("/ws")) as client:
            await wait_ready(client.runner, "counter")
            gateway = gateway_of(form, app, proxies)
            assert isinstance(gateway, WebSocketProxyServer)
            await strand(relay)
            await asyncio.wait_for(gateway.wait_connection(), 10)
            assert gateway.detached
    assert gateway.finished
    assert gateway.stats.sessions_lost == 1


@dataclass(kw_only=True)
class Padded(Numbered):
    pad: str = ""


class Answerer(BaseWorker):
    """Answers every Padded message to its sender, four times as large."""

    async def on_bus_message(self, message: BusMessage) -> None:
        if isinstance(message, Padded):
            await self.send_bus_message(
                Padded(source=self.name, target=message.source, n=message.n, pad=message.pad * 4)
            )
        await super().on_bus_message(message)


async def test_a_link_reads_acknowledgements_while_the_bus_pushes_back() -> None:
    """Flow control both ways at once: a client sends as fast as it can to a worker whose
    answers are four times larger, through queues of 8 and the smallest replay windows. To
    take in the client's window of requests, the server must send four windows of answers,
    so it waits for the client's acknowledgements while its worker waits for room toward the
    client: the server's link must read them on while the bus pushes back on its delivery
    (a link that read only as fast as it delivered would stall for good, and be closed as
    too slow). Every answer arrives, once, in order."""
    settings = BusProxySettings(
        bus_queue_size=8, send_queue_size=8, replay_buffer_size=MIN_REPLAY_BUFFER
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runner_of(app).add_workers(Answerer("counter"))
        yield

    app = FastAPI(lifespan=lifespan)
    configure_bus(app, settings=settings)
    include_bus_proxy(app, "/ws", "counter", remote_worker_name="client")
    total = 2000
    pad = "x" * 512
    async with running_uvicorn(app) as server:
        runner = WorkerRunner(name="client-runner", handle_sigint=False)
        client = Counter("client")
        client.total = total
        proxy = WebSocketProxyClient(
            "link",
            url=server.url("/ws"),
            remote_worker_name="counter",
            local_worker_name="client",
            active=True,
            send_queue_size=8,
            replay_buffer_size=MIN_REPLAY_BUFFER,
            compression=None,  # alike messages would compress to nothing
        )
        async with runner:
            await runner.add_workers(client, proxy)
            await wait_ready(runner, "counter")
            for n in range(total):
                message = Padded(source="client", target="counter", n=n, pad=pad)
                await client.send_bus_message(message)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(client.complete.wait(), 30)
            assert client.report(total) == {"lost": 0, "duplicated": 0, "reordered": 0}
            assert proxy.stats.too_slow == 0
            assert proxy.stats.reconnects == 0
