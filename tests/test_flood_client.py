"""The client side of admission: a server that floods a client fills only its own lane in the
client worker's queue; the client's link stops reading, and so does websockets, so the flood
waits in the kernel's buffers and then at the server, not in the client's memory."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from websockets.asyncio.server import ServerConnection, serve

from fastapi_busproxy import (
    BaseWorker,
    BusDataMessage,
    BusMessage,
    InMemoryBus,
    JSONMessageSerializer,
    WebSocketProxyClient,
    WorkerRunner,
)
from fastapi_busproxy.proxy import ReconnectPolicy

pytestmark = [pytest.mark.anyio, pytest.mark.uvicorn]

LANE = 64
FLOOD = 20_000  # of about 1 KiB each: far more than the kernel buffers of a loopback socket


@dataclass(kw_only=True)
class Chunk(BusDataMessage):
    n: int
    pad: str


class WatchedBus(InMemoryBus):
    """Tells when a send finds the watched subscriber's lane full (and so will wait)."""

    def __init__(self, watched: str) -> None:
        super().__init__(capacity=LANE)
        self.watched = watched
        self.full = asyncio.Event()

    async def send(self, message: BusMessage, **options: Any) -> None:
        if message.target == self.watched and any(
            s.name == self.watched and s.queued >= LANE for s in self.subscriptions
        ):
            self.full.set()
        await super().send(message, **options)


class Gated(BaseWorker):
    """The client's worker: stuck on its first chunk until the gate opens."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.gate = asyncio.Event()
        self.got: list[int] = []
        self.first = asyncio.Event()
        self.all_in = asyncio.Event()

    async def on_bus_message(self, message: BusMessage) -> None:
        await super().on_bus_message(message)
        if isinstance(message, Chunk):
            self.got.append(message.n)
            self.first.set()
            await self.gate.wait()
            if len(self.got) == FLOOD:
                self.all_in.set()


async def test_a_server_that_floods_a_client_waits_at_its_socket() -> None:
    codec = JSONMessageSerializer()
    pad = "x" * 1000
    sent = 0
    flood_done = asyncio.Event()

    async def flood(ws: ServerConnection) -> None:
        nonlocal sent
        for n in range(FLOOD):
            await ws.send(codec.serialize(Chunk(source="server", target="voice", n=n, pad=pad)))
            sent += 1
        flood_done.set()
        await ws.wait_closed()

    async with serve(flood, "127.0.0.1", 0, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        bus = WatchedBus("voice")
        runner = WorkerRunner(bus=bus, handle_sigint=False)
        voice = Gated("voice")
        proxy = WebSocketProxyClient(
            "link",
            url=f"ws://127.0.0.1:{port}",
            remote_worker_name="server",
            local_worker_name="voice",
            active=True,
            compression=None,
            reconnect=ReconnectPolicy(max_attempts=1),
        )
        async with runner:
            await runner.add_workers(voice, proxy)
            with anyio.fail_after(10):
                await voice.first.wait()
            subscription = voice.subscription
            assert subscription is not None
            with anyio.fail_after(10):
                await bus.full.wait()  # the link has filled the lane and waits to deliver
            for _ in range(500):  # give the flood every chance to go on
                await asyncio.sleep(0)
            # Bounded: the link waits to deliver more (it is woken once a burst of room is
            # free, so the lane may sit a little below its capacity meanwhile).
            assert LANE // 2 < subscription.queued <= LANE
            assert not flood_done.is_set()  # the server waits at the socket
            assert sent < FLOOD
            voice.gate.set()
            with anyio.fail_after(60):
                await flood_done.wait()
                await voice.all_in.wait()
    assert voice.got == list(range(FLOOD))  # nothing lost, order kept
