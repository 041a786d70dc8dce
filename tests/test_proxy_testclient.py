"""WebSocketProxyServer behind Starlette's TestClient, with a raw WebSocket as the peer.

The test plays the remote client byte for byte (the plain reference format), so every inbound
check of the server proxy is exercised exactly as a hostile or buggy peer would trigger it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fastapi import FastAPI, WebSocket
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from fastapi_busproxy import (
    BusCancelMessage,
    BusEndMessage,
    BusEndWorkerMessage,
    BusMessage,
    BusWorkerRegistryMessage,
    CloseCode,
    JSONMessageSerializer,
    WebSocketProxyServer,
    WorkerRegistryEntry,
    WorkerRunner,
)
from tests.core_support import Echo, Ping, Pong

CODEC = JSONMessageSerializer()


class App:
    """A FastAPI app with a shared runner, an Echo worker and one proxy per connection."""

    def __init__(self, **proxy_options: Any) -> None:
        self.runner = WorkerRunner(name="server-runner")
        self.worker = Echo("worker")
        self.proxies: list[WebSocketProxyServer] = []
        self.disconnected: list[str] = []

        @asynccontextmanager
        async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
            async with self.runner:
                await self.runner.add_workers(self.worker)
                yield

        self.app = FastAPI(lifespan=lifespan)

        @self.app.websocket("/ws")
        async def endpoint(websocket: WebSocket) -> None:
            proxy = WebSocketProxyServer(
                f"gateway-{len(self.proxies)}",
                websocket=websocket,
                worker_name="worker",
                remote_worker_name="voice",
                **proxy_options,
            )
            self.proxies.append(proxy)

            @proxy.event_handler("on_client_disconnected")
            async def gone(worker: WebSocketProxyServer, ws: WebSocket) -> None:
                self.disconnected.append(worker.name)

            await self.runner.add_workers(proxy)
            await proxy.wait()


def send(ws: Any, message: BusMessage) -> None:
    ws.send_bytes(CODEC.serialize(message))


def receive(ws: Any) -> BusMessage:
    return CODEC.deserialize(ws.receive_bytes())


def expect_registry(ws: Any) -> BusWorkerRegistryMessage:
    message = receive(ws)
    assert isinstance(message, BusWorkerRegistryMessage)
    assert [entry.name for entry in message.workers] == ["worker"]
    assert message.runner == "server-runner"
    return message


def ping_pong(ws: Any, text: str) -> None:
    send(ws, Ping(source="voice", target="worker", text=text))
    pong = receive(ws)
    assert isinstance(pong, Pong)
    assert (pong.source, pong.target, pong.text) == ("worker", "voice", text.upper())


@pytest.fixture
def server() -> Iterator[tuple[App, TestClient]]:
    app = App()
    with TestClient(app.app) as client:
        yield app, client


def test_registry_first_then_messages_both_ways(server: tuple[App, TestClient]) -> None:
    app, client = server
    with client.websocket_connect("/ws") as ws:
        expect_registry(ws)
        ping_pong(ws, "hello")
        ping_pong(ws, "again")
    assert [m.text for m in app.worker.received] == ["hello", "again"]  # type: ignore[attr-defined]
    assert all(m.origin == "gateway-0" for m in app.worker.received)


BAD_FRAMES = {
    "text frame": ("text", '{"__type__":"x","__data__":{}}', "text_frame"),
    "malformed json": ("bytes", b'{"__type__": "pipecat.bus.mess', "malformed"),
    "top-level list": ("bytes", b"[1, 2, 3]", "malformed"),
    "unknown type": (
        "bytes",
        b'{"__type__":"pipecat.bus.messages.NoSuchMessage","__data__":{"source":"voice"}}',
        "malformed",
    ),
    "unregistered class os.system": (
        "bytes",
        b'{"__type__":"os.system","__data__":{"source":"voice","target":"worker"}}',
        "malformed",
    ),
    "missing field": (
        "bytes",
        b'{"__type__":"pipecat.bus.messages.BusJobRequestMessage",'
        b'"__data__":{"source":"voice","target":"worker"}}',
        "malformed",
    ),
    "forged source": ("message", Ping(source="admin", target="worker", text="x"), "forged_source"),
    "wrong target": ("message", Ping(source="voice", target="billing", text="x"), "wrong_target"),
    "forged end": ("message", BusEndMessage(source="admin", reason="bye"), "forged_source"),
    "end of another worker": (
        "message",
        BusEndWorkerMessage(source="voice", target="billing"),
        "wrong_target",
    ),
    "phantom registry": (
        "message",
        BusWorkerRegistryMessage(
            source="gateway", runner="evil", workers=[WorkerRegistryEntry(name="intruder")]
        ),
        "foreign_registry",
    ),
}


@pytest.mark.parametrize("kind", list(BAD_FRAMES))
def test_bad_frame_is_refused_and_link_stays_up(
    server: tuple[App, TestClient], kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    app, client = server
    how, payload, reason = BAD_FRAMES[kind]
    modules_before = set(sys.modules)
    with client.websocket_connect("/ws") as ws:
        expect_registry(ws)
        if how == "text":
            ws.send_text(payload)
        elif how == "bytes":
            ws.send_bytes(payload)
        else:
            send(ws, payload)
        ping_pong(ws, "still up")
        proxy = app.proxies[0]
        assert proxy.stats.rejected_by_reason == {reason: 1}
        assert proxy.stats.messages_in == 1
    assert set(sys.modules) == modules_before
    assert app.runner.state.value == "running"
    assert "intruder" not in app.runner.registry
    assert app.worker.state.value == "running"
    logged = [r for r in caplog.records if "refused inbound" in r.getMessage()]
    assert len(logged) == 1
    assert "gateway-0" in logged[0].getMessage()


def test_too_many_malformed_frames_close_with_1007() -> None:
    app = App(max_bad_frames=3)
    with TestClient(app.app) as client, client.websocket_connect("/ws") as ws:
        expect_registry(ws)
        for _ in range(3):
            ws.send_bytes(b"not json")
        with pytest.raises(WebSocketDisconnect) as info:
            ws.receive_bytes()
        assert info.value.code == CloseCode.INVALID_DATA


def test_too_many_refused_messages_close_with_1008() -> None:
    app = App(max_bad_frames=3)
    with TestClient(app.app) as client, client.websocket_connect("/ws") as ws:
        expect_registry(ws)
        for _ in range(3):
            send(ws, Ping(source="admin", target="worker", text="forged"))
        with pytest.raises(WebSocketDisconnect) as info:
            ws.receive_bytes()
        assert info.value.code == CloseCode.POLICY_VIOLATION
    assert app.worker.received == []


def test_good_message_resets_the_bad_streak() -> None:
    app = App(max_bad_frames=3)
    with TestClient(app.app) as client, client.websocket_connect("/ws") as ws:
        expect_registry(ws)
        for round_ in range(3):
            ws.send_bytes(b"not json")
            ws.send_bytes(b"not json")
            ping_pong(ws, f"round {round_}")
        assert app.proxies[0].stats.rejected == 6


def test_oversized_message_closes_with_1009() -> None:
    app = App(max_message_size=2000)
    with TestClient(app.app) as client, client.websocket_connect("/ws") as ws:
        expect_registry(ws)
        send(ws, Ping(source="voice", target="worker", text="x" * 4000))
        with pytest.raises(WebSocketDisconnect) as info:
            ws.receive_bytes()
        assert info.value.code == CloseCode.MESSAGE_TOO_BIG
    assert app.proxies[0].stats.oversized == 1
    assert app.worker.received == []


@pytest.mark.parametrize(
    "message",
    [
        BusEndMessage(source="voice", reason="done"),
        BusEndMessage(source="voice", target="worker", reason="done"),
        BusEndWorkerMessage(source="voice", target="worker", reason="done"),
        BusCancelMessage(source="voice", reason="done"),
    ],
    ids=["end", "end to the worker", "end the worker", "cancel"],
)
def test_a_remote_end_closes_only_that_peers_connection(
    server: tuple[App, TestClient], message: BusMessage
) -> None:
    """A proxy added by hand has a session of its own: the peer's end or cancel ends it (the
    connection closes with 1001), never the shared worker nor the app's runner."""
    app, client = server
    with client.websocket_connect("/ws") as first, client.websocket_connect("/ws") as second:
        expect_registry(first)
        expect_registry(second)
        ending, staying = app.proxies
        assert ending.session is not app.runner.session
        assert ending.session is not staying.session
        send(first, message)
        with pytest.raises(WebSocketDisconnect) as info:
            first.receive_bytes()
        assert info.value.code == CloseCode.GOING_AWAY
        client.portal.call(ending.wait)  # type: ignore[union-attr]
        assert ending.stats.rejected == 0
        ping_pong(second, "still served")
        assert app.worker.state.value == "running"
        assert "worker" in app.runner.registry
    assert app.runner.state.value == "running"
    assert [m.text for m in app.worker.received] == ["still served"]  # type: ignore[attr-defined]


def test_client_readiness_registers_remote_worker_until_disconnect(
    server: tuple[App, TestClient],
) -> None:
    app, client = server
    with client.websocket_connect("/ws") as ws:
        expect_registry(ws)
        send(
            ws,
            BusWorkerRegistryMessage(
                source="proxy", runner="client-runner", workers=[WorkerRegistryEntry(name="voice")]
            ),
        )
        ping_pong(ws, "sync")  # the registry message was handled before this answer
        assert "voice" in app.runner.registry
        assert app.runner.registry.origin_of("voice") == "gateway-0"
        assert not app.runner.registry.is_local("voice")

        # A server-side job request now reaches the client's worker through the link.
        async def ask() -> str:
            return await app.worker.request_job("voice", name="lookup", timeout=5)

        job_id = client.portal.call(ask)  # type: ignore[union-attr]
        request = receive(ws)
        assert type(request).__name__ == "BusJobRequestMessage"
        assert request.job_id == job_id  # type: ignore[attr-defined]
        assert json.loads(CODEC.serialize(request))["__data__"]["job_name"] == "lookup"
    client.portal.call(app.proxies[0].wait)  # type: ignore[union-attr]
    assert app.disconnected == ["gateway-0"]
    assert "voice" not in app.runner.registry
    assert app.runner.get_worker("gateway-0") is None


def test_two_connections_are_two_proxies(server: tuple[App, TestClient]) -> None:
    app, client = server
    with client.websocket_connect("/ws") as first:
        expect_registry(first)
        ping_pong(first, "one")
        with client.websocket_connect("/ws") as second:
            expect_registry(second)
            assert len(app.proxies) == 2
        ping_pong(first, "one again")
