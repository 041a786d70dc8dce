"""WebSocketProxyClient against real uvicorn servers: connect, refuse, retry, give up, replace."""

from __future__ import annotations

import asyncio
import logging
import socket
from contextlib import asynccontextmanager
from typing import Any

import pytest
import websockets
from fastapi import FastAPI, WebSocket
from starlette.responses import Response

from fastapi_busproxy import (
    BaseWorker,
    BusDataMessage,
    CloseCode,
    ConfigurationError,
    HandshakeRejectedError,
    WebSocketProxyClient,
    WebSocketProxyServer,
    WorkerRunner,
    WorkerUnreachableError,
)
from fastapi_busproxy.proxy import ReconnectPolicy
from tests.servers import running_uvicorn
from tests.test_proxy_uvicorn import Events

pytestmark = pytest.mark.anyio

FAST_RETRY = ReconnectPolicy(initial_delay=0.01, max_delay=0.05)


def gateway_app(
    *, require_token: str | None = None, deny_status: int = 403, **proxy_options: Any
) -> tuple[FastAPI, WorkerRunner, list[WebSocketProxyServer], list[dict[str, str]]]:
    """A server with worker "worker"; each connection gets a proxy. Records handshake headers."""
    runner = WorkerRunner(name="server-runner")
    proxies: list[WebSocketProxyServer] = []
    seen_headers: list[dict[str, str]] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        async with runner:
            await runner.add_workers(BaseWorker("worker"))
            yield

    app = FastAPI(lifespan=lifespan)

    @app.websocket("/ws")
    async def endpoint(websocket: WebSocket) -> None:
        seen_headers.append(dict(websocket.headers))
        if require_token is not None and websocket.headers.get("authorization") != (
            f"Bearer {require_token}"
        ):
            await websocket.send_denial_response(Response(status_code=deny_status))
            return
        proxy = WebSocketProxyServer(
            f"gateway-{len(proxies)}",
            websocket=websocket,
            worker_name="worker",
            remote_worker_name="voice",
            **proxy_options,
        )
        proxies.append(proxy)
        await runner.add_workers(proxy)
        await proxy.wait()

    return app, runner, proxies, seen_headers


def client(url: str, **options: Any) -> WebSocketProxyClient:
    options.setdefault("reconnect", FAST_RETRY)
    return WebSocketProxyClient(
        "proxy", url=url, remote_worker_name="worker", local_worker_name="voice", **options
    )


@pytest.mark.parametrize("status", [401, 403])
async def test_refused_handshake_stops_retrying_and_says_why(status: int) -> None:
    app, _, proxies, seen = gateway_app(require_token="s3cret", deny_status=status)
    async with running_uvicorn(app) as server:
        runner = WorkerRunner()
        proxy = client(server.url("/ws"), active=True, headers={"Authorization": "Bearer nope"})
        events = Events(proxy, "on_gave_up", "on_reconnecting", "on_connected")
        async with runner:
            await runner.add_workers(BaseWorker("voice"), proxy)
            await asyncio.wait_for(events.wait("on_gave_up"), 10)
        (error,) = events.seen["on_gave_up"][0]
        assert isinstance(error, HandshakeRejectedError)
        assert error.status_code == status
        assert str(status) in str(error)
        assert events.seen["on_reconnecting"] == []
        assert events.seen["on_connected"] == []
        assert len(seen) == 1  # one try, no retry
        assert proxies == []


async def test_headers_callable_is_called_at_every_connect() -> None:
    app, _, proxies, seen = gateway_app(require_token="t2")
    tokens = iter(["t1", "t2", "t2"])
    calls = 0

    async def headers() -> dict[str, str]:
        nonlocal calls
        calls += 1
        return {"Authorization": f"Bearer {next(tokens)}"}

    async with running_uvicorn(app) as server:
        runner = WorkerRunner()
        # "t1" is refused with 403 (no retry), so reconnecting is driven by hand here.
        proxy = client(server.url("/ws"), headers=headers)
        events = Events(proxy, "on_gave_up", "on_connected")
        async with runner:
            await runner.add_workers(BaseWorker("voice"), proxy)
            await proxy.connect()
            await asyncio.wait_for(events.wait("on_gave_up"), 10)
            await proxy.connect()
            await asyncio.wait_for(events.wait("on_connected"), 10)
            await asyncio.wait_for(runner.registry.wait_ready("worker"), 10)
        assert calls == 2
        assert [h.get("authorization") for h in seen] == ["Bearer t1", "Bearer t2"]
        assert len(proxies) == 1


async def test_sync_headers_callable() -> None:
    app, _, _, seen = gateway_app(require_token="abc")
    async with running_uvicorn(app) as server:
        runner = WorkerRunner()
        proxy = client(
            server.url("/ws"), active=True, headers=lambda: {"Authorization": "Bearer abc"}
        )
        async with runner:
            await runner.add_workers(BaseWorker("voice"), proxy)
            await asyncio.wait_for(runner.registry.wait_ready("worker"), 10)
        assert seen[0]["authorization"] == "Bearer abc"


async def test_gives_up_after_max_attempts_when_nothing_listens() -> None:
    with socket.socket() as sock:  # a port that refuses connections
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    runner = WorkerRunner()
    proxy = client(
        f"ws://127.0.0.1:{port}/ws",
        active=True,
        reconnect=ReconnectPolicy(initial_delay=0.001, max_delay=0.002, max_attempts=3),
    )
    events = Events(proxy, "on_gave_up", "on_reconnecting")
    async with runner:
        await runner.add_workers(BaseWorker("voice"), proxy)
        await asyncio.wait_for(events.wait("on_gave_up"), 10)
    assert [args[0] for args in events.seen["on_reconnecting"]] == [1, 2]
    (error,) = events.seen["on_gave_up"][0]
    assert isinstance(error, OSError)


async def test_deactivate_closes_and_reactivate_does_not_leak() -> None:
    app, server_runner, proxies, _ = gateway_app()
    async with running_uvicorn(app) as server:
        runner = WorkerRunner()
        voice = BaseWorker("voice")
        proxy = client(server.url("/ws"))
        events = Events(proxy, "on_connected", "on_disconnected")
        async with runner:
            await runner.add_workers(voice, proxy)
            for round_ in range(1, 4):
                await voice.activate_worker("proxy")
                await asyncio.wait_for(events.wait("on_connected", 2 * round_ - 1), 10)
                await asyncio.wait_for(runner.registry.wait_ready("worker"), 10)
                # Activating again replaces the connection: the old one is closed first.
                await voice.activate_worker("proxy")
                await asyncio.wait_for(events.wait("on_connected", 2 * round_), 10)
                await voice.deactivate_worker("proxy")
                await asyncio.wait_for(events.wait("on_disconnected", 2 * round_), 10)
            assert not proxy.connected
            assert "worker" not in runner.registry
            assert len(proxy._tasks) == 0  # no connect loop, no link task left behind
        for gateway in proxies:
            await asyncio.wait_for(gateway.wait(), 10)
        codes = [p.close_info.code for p in proxies if p.close_info is not None]
        assert codes == [CloseCode.NORMAL_CLOSURE] * 6
        assert server_runner.get_worker("gateway-0") is None


async def test_stop_closes_with_1001_and_is_idempotent() -> None:
    app, _, proxies, _ = gateway_app()
    async with running_uvicorn(app) as server:
        runner = WorkerRunner()
        proxy = client(server.url("/ws"), active=True)
        async with runner:
            await runner.add_workers(BaseWorker("voice"), proxy)
            await asyncio.wait_for(runner.registry.wait_ready("worker"), 10)
            await proxy.stop()
            await proxy.stop()
            assert proxy.finished
            assert runner.get_worker("proxy") is None
            assert "worker" not in runner.registry
        await asyncio.wait_for(proxies[0].wait(), 10)
        assert proxies[0].close_info is not None
        assert proxies[0].close_info.code == CloseCode.GOING_AWAY


async def test_server_keepalive_closes_a_silent_framed_peer_with_1011() -> None:
    app, _, proxies, _ = gateway_app(ping_interval=0.05, ping_timeout=0.05)
    async with running_uvicorn(app) as server:
        # A framed peer that never answers our pings (and sends nothing).
        async with websockets.connect(
            server.url("/ws"),
            subprotocols=["busproxy.v1.json"],
            compression=None,  # type: ignore[list-item]
        ) as ws:
            assert ws.subprotocol == "busproxy.v1.json"
            with pytest.raises(websockets.ConnectionClosed) as info:
                await read_until_closed(ws)
            assert info.value.rcvd is not None
            assert info.value.rcvd.code == CloseCode.INTERNAL_ERROR
            assert "keepalive" in info.value.rcvd.reason
        assert proxies[0].close_info is not None
        assert proxies[0].close_info.code == CloseCode.INTERNAL_ERROR


async def read_until_closed(ws: Any) -> None:
    """Read (and ignore: pings, the registry) until the server closes."""
    while True:
        await asyncio.wait_for(ws.recv(), 10)


async def test_a_wrong_path_is_refused_with_a_hint_at_the_path() -> None:
    """Starlette answers a WebSocket handshake on a path with no route with 403, as it does
    for bad credentials: the error names both causes, not the credentials alone."""
    app, _, proxies, _seen = gateway_app()
    async with running_uvicorn(app) as server:
        runner = WorkerRunner()
        proxy = client(server.url("/no-such-path"), active=True)
        events = Events(proxy, "on_gave_up")
        async with runner:
            await runner.add_workers(BaseWorker("voice"), proxy)
            await asyncio.wait_for(events.wait("on_gave_up"), 10)
        (error,) = events.seen["on_gave_up"][0]
        assert isinstance(error, HandshakeRejectedError)
        assert error.status_code == 403
        assert "path" in str(error)
        assert proxies == []


async def test_an_inactive_proxy_says_once_why_nothing_crosses(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``active=False`` is the reference's default: a message for the remote worker then waits
    in the outbox, and the proxy says why, once, with the fix."""
    caplog.set_level(logging.INFO, logger="fastapi_busproxy.proxy")
    runner = WorkerRunner()
    voice = BaseWorker("voice")
    proxy = client("ws://127.0.0.1:9/ws")  # never dialled: the proxy is not active
    async with runner:
        await runner.add_workers(voice, proxy)
        for _ in range(3):
            await voice.send_bus_message(BusDataMessage(source="voice", target="worker"))
        await runner.end("test over")  # after the messages already queued
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "not active" in warnings[0]
    assert "activate_worker('proxy')" in warnings[0]
    assert any("not connecting" in r.getMessage() for r in caplog.records)


async def test_a_job_behind_a_link_that_gave_up_fails_at_once_with_the_cause() -> None:
    """A wrong token: the link gives up at the handshake, and a job (or a readiness wait) for
    the remote worker fails then, with the link's error as the cause, not after its timeout."""
    app, _, _, _ = gateway_app(require_token="s3cret")
    async with running_uvicorn(app) as server:
        runner = WorkerRunner()
        voice = BaseWorker("voice")
        proxy = client(server.url("/ws"), active=True, headers={"Authorization": "Bearer nope"})
        async with runner:
            await runner.add_workers(voice, proxy)

            async def run_job() -> None:
                async with voice.job("worker", name="ask", timeout=60):
                    pass

            # The job's own timeout is 60 s: failing at all inside 10 s is the point.
            with pytest.raises(WorkerUnreachableError) as caught:
                await asyncio.wait_for(run_job(), 10)
            assert isinstance(caught.value.__cause__, HandshakeRejectedError)
            assert "403" in str(caught.value)
            with pytest.raises(WorkerUnreachableError):
                await runner.registry.wait_ready("worker", 60)


async def test_an_outage_is_logged_once_with_its_cause_and_again_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server that is down: one WARNING naming the cause (connection refused), not one per
    retry; and one when the link is up again."""
    caplog.set_level(logging.DEBUG, logger="fastapi_busproxy.proxy")
    with socket.socket() as sock:  # a port that refuses connections, until the server starts
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app, _, _, _ = gateway_app()
    runner = WorkerRunner()
    proxy = client(f"ws://127.0.0.1:{port}/ws", active=True)
    events = Events(proxy, "on_reconnecting", "on_connected")
    async with runner:
        await runner.add_workers(BaseWorker("voice"), proxy)
        await asyncio.wait_for(events.wait("on_reconnecting", 4), 10)
        async with running_uvicorn(app, port=port):
            await asyncio.wait_for(events.wait("on_connected"), 10)
            await runner.registry.wait_ready("worker", 10)
            # (Read now: when this server stops, the next outage begins.)
            warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    refused = [w for w in warnings if "cannot connect" in w]
    assert len(refused) == 1, "\n".join(warnings)
    assert "ConnectionRefusedError" in refused[0]
    assert len([w for w in warnings if "connected to" in w and "again after" in w]) == 1


async def test_a_list_of_urls_is_tried_in_turn_without_waiting_for_the_backoff() -> None:
    with socket.socket() as sock:  # an instance that is down
        sock.bind(("127.0.0.1", 0))
        down = f"ws://127.0.0.1:{sock.getsockname()[1]}/ws"
    app, _, proxies, _ = gateway_app()
    async with running_uvicorn(app) as server:
        runner = WorkerRunner()
        # A backoff far longer than the test: only trying the next URL at once connects.
        slow = ReconnectPolicy(initial_delay=60, max_delay=60)
        proxy = client([down, server.url("/ws")], active=True, reconnect=slow)
        events = Events(proxy, "on_connected", "on_reconnecting")
        async with runner:
            await runner.add_workers(BaseWorker("voice"), proxy)
            await asyncio.wait_for(events.wait("on_connected"), 10)
            assert proxy.url == server.url("/ws")
            assert events.seen["on_reconnecting"] == []
        assert len(proxies) == 1


def test_urls_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="ws:// or wss://"):
        client([])
    with pytest.raises(ConfigurationError, match="'http://x'"):
        client(["ws://a/ws", "http://x"])
