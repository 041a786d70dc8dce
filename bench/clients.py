"""The two kinds of client the scenarios drive: a raw WebSocket, and a bus link.

A :class:`RawLink` is a plain ``websockets`` client of the echo server (the baseline). A
:class:`BusLink` is what an application does: a local worker ``voice-<i>`` and a
:class:`WebSocketProxyClient` to ``/ws/voice-<i>`` whose remote worker is ``echo``.

Each bus link has a runner of its own. One runner cannot hold several links whose remote
worker has the same name: a client proxy forwards every message targeted at its remote worker,
whoever sent it (the reference's rule), so with N links to ``echo`` in one runner every message
would cross N links, and the N-1 servers that did not expect it would refuse it as a forged
source. N runners in one process is also what N client processes of one link each look like.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import string
import struct
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from fastapi_busproxy import (
    BaseWorker,
    BusMessage,
    ReconnectPolicy,
    WebSocketProxyClient,
    WorkerReadyData,
    WorkerRunner,
)

from .messages import BENCH_TYPES, BenchBinary, BenchMessage, make_serializer
from .stats import OrderCheck

OPEN_TIMEOUT = 20.0
CLOSE_TIMEOUT = 5.0
MAX_SIZE = 1_048_576  # the proxies' default max_message_size, for the raw clients too
SEQ = struct.Struct("!Q")  # a raw message: 8-byte sequence number, then the payload
OPENING = 64  # handshakes in flight at once when opening many links

Reply = Callable[[int], None]


def text_payload(size: int, seed: int = 1) -> str:
    """``size`` random letters and digits (about as compressible as ordinary text)."""
    rng = random.Random(seed)
    return "".join(rng.choices(string.ascii_letters + string.digits, k=size))


def binary_payload(size: int, seed: int = 2) -> bytes:
    """``size`` random bytes (incompressible, like encoded audio)."""
    return random.Random(seed).randbytes(size)


class RawLink:
    """A plain ``websockets`` connection to the echo server."""

    def __init__(self, url: str, *, deflate: bool) -> None:
        self.url = url
        self.deflate = deflate
        self.ws: ClientConnection | None = None
        self.on_reply: Reply | None = None
        self._reader: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self.ws = await connect(
            self.url,
            compression="deflate" if self.deflate else None,
            max_size=MAX_SIZE,
            open_timeout=OPEN_TIMEOUT,
            close_timeout=CLOSE_TIMEOUT,
        )

    async def send(self, seq: int, payload: bytes) -> None:
        assert self.ws is not None
        await self.ws.send(SEQ.pack(seq) + payload)

    async def recv_seq(self) -> int:
        assert self.ws is not None
        data = await self.ws.recv(decode=False)
        return int(SEQ.unpack_from(data)[0])

    def start_reading(self) -> None:
        """Hand every reply's sequence number to :attr:`on_reply`, in a task, until closed."""
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            while True:
                seq = await self.recv_seq()
                if self.on_reply is not None:
                    self.on_reply(seq)

    async def close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()


class Voice(BaseWorker):
    """The local worker of a bus link: sends to ``echo``, hands every reply to ``on_reply``."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.on_reply: Reply | None = None
        self.echo_ready = asyncio.Event()

    async def start(self) -> None:
        await super().start()
        await self.watch_workers("echo")

    async def on_worker_ready(self, data: WorkerReadyData) -> None:
        if data.worker_name == "echo":
            self.echo_ready.set()

    async def on_bus_message(self, message: BusMessage) -> None:
        if isinstance(message, BENCH_TYPES):
            if self.on_reply is not None:
                self.on_reply(message.seq)
            return
        await super().on_bus_message(message)


class BusLink:
    """A runner with a ``voice`` worker and a proxy client to ``/<route>/<voice>`` on the bus
    server (``ws``: ``include_bus_proxy``; ``hand``: the reference page's endpoint)."""

    def __init__(
        self,
        base_url: str,
        name: str,
        *,
        deflate: bool,
        serializer: str = "json",
        route: str = "ws",
        **proxy_options: Any,
    ) -> None:
        self.name = name
        self.runner = WorkerRunner(name=f"bench-{name}")
        self.voice = Voice(name)
        self.proxy = WebSocketProxyClient(
            f"proxy-{name}",
            url=f"{base_url}/{route}/{name}",
            remote_worker_name="echo",
            local_worker_name=name,
            active=True,
            compression="deflate" if deflate else None,
            serializer=make_serializer(serializer),
            open_timeout=OPEN_TIMEOUT,
            **{"reconnect": ReconnectPolicy(max_attempts=3), **proxy_options},
        )

    @property
    def on_reply(self) -> Reply | None:
        return self.voice.on_reply

    @on_reply.setter
    def on_reply(self, value: Reply | None) -> None:
        self.voice.on_reply = value

    async def open(self) -> None:
        await self.runner.add_workers(self.voice, self.proxy)
        await self.runner.start()
        async with asyncio.timeout(OPEN_TIMEOUT):
            await self.voice.echo_ready.wait()

    async def send_text(self, seq: int, data: str) -> None:
        await self.voice.send_bus_message(
            BenchMessage(source=self.name, target="echo", seq=seq, data=data)
        )

    async def send_binary(self, seq: int, data: bytes) -> None:
        await self.voice.send_bus_message(
            BenchBinary(source=self.name, target="echo", seq=seq, data=data)
        )

    def start_reading(self) -> None:
        """Replies already arrive through the voice worker."""

    async def close(self) -> None:
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self.runner.end("bench done")
        except TimeoutError:
            await self.runner.cancel("bench done (timeout)")


async def open_all(links: Iterable[RawLink | BusLink], concurrency: int = OPENING) -> None:
    """Open links, ``concurrency`` handshakes at a time; the first failure is raised."""
    gate = asyncio.Semaphore(concurrency)

    async def one(link: RawLink | BusLink) -> None:
        async with gate:
            await link.open()

    async with asyncio.TaskGroup() as group:
        for link in links:
            group.create_task(one(link))


async def close_all(links: Iterable[RawLink | BusLink]) -> None:
    await asyncio.gather(*(link.close() for link in links), return_exceptions=True)


async def wait_replies(checks: list[OrderCheck], done: asyncio.Event, idle: float) -> None:
    """Return when ``done`` is set, or when no reply at all arrived for ``idle`` seconds."""
    last = -1
    while not done.is_set():
        received = sum(c.received for c in checks)
        if received == last:
            return
        last = received
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(idle):
                await done.wait()


class Countdown:
    """Sets ``event`` once ``total`` replies have been seen."""

    def __init__(self, total: int) -> None:
        self.left = total
        self.event = asyncio.Event()
        if total <= 0:
            self.event.set()

    def tick(self) -> None:
        self.left -= 1
        if self.left <= 0:
            self.event.set()


def now() -> float:
    return time.perf_counter()


Sender = Callable[[int], Awaitable[None]]
