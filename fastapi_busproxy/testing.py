"""A test kit: play the remote side of a link against your app, in a few lines.

::

    async with running_app(app) as url:
        async with RemotePeer(f"{url}/ws", "voice", remote_worker_name="assistant") as peer:
            assert await peer.job("ask", payload={"q": 1}) == {"a": 2}
            await peer.send(Question(source="voice", target="assistant", text="?"))
            answer = await peer.expect(Answer)

:func:`running_app` serves the app with uvicorn on ``127.0.0.1`` and a free port, in the test's
event loop (its lifespan runs, and its links close with 1001 at the end). :class:`RemotePeer`
is a worker of a runner of its own, linked to the app by our :class:`WebSocketProxyClient`,
exactly as a remote process would be: entering it waits until the app's worker is ready, and
fails at once, with the cause, when the link cannot come up (a refused handshake, worker names
that do not match). Nothing here waits on the clock: each wait is for an event, under a
timeout.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from .messages import BusMessage
from .proxy.client import WebSocketProxyClient
from .proxy.protocol import LinkStats
from .proxy.reconnect import ReconnectPolicy
from .runner import WorkerRunner
from .serializers import MessageSerializer
from .worker import BaseWorker

__all__ = ["RemotePeer", "running_app"]

_M = TypeVar("_M", bound=BusMessage)

MAX_KEPT = 10_000
"""Messages a peer keeps for :meth:`RemotePeer.expect` (the oldest go first)."""


@asynccontextmanager
async def running_app(app: Any, *, host: str = "127.0.0.1", **options: Any) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on ``host`` and a free port until the block ends; yields the
    base WebSocket URL (``ws://127.0.0.1:<port>``). ``options`` go to ``uvicorn.Config``."""
    import uvicorn

    from .serve import Server

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(128)  # listening before uvicorn starts: early connections wait in the backlog
    sock.setblocking(False)
    options.setdefault("log_level", "warning")
    options.setdefault("ws", "websockets-sansio")
    server = Server(uvicorn.Config(app, lifespan="on", **options), app)
    loop = asyncio.get_running_loop()
    task = loop.create_task(server.serve(sockets=[sock]))
    port = sock.getsockname()[1]
    answered = loop.create_task(_answered(host, port))
    try:
        # The server answers a request once its lifespan has started; or it stops first.
        await asyncio.wait((task, answered), return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # it could not start (its lifespan raised...): say why
            raise RuntimeError("the server stopped before it started")
        answered.result()
        yield f"ws://{host}:{port}"
    finally:
        answered.cancel()
        server.should_exit = True
        await asyncio.wait((task, answered))
        sock.close()


async def _answered(host: str, port: int) -> None:
    """Return once the server answers an HTTP request (any status)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        await writer.drain()
        await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()


class _Recorder(BaseWorker):
    """The peer's worker: keeps what reaches it for :meth:`RemotePeer.expect`."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.kept: deque[BusMessage] = deque(maxlen=MAX_KEPT)
        self.arrived = asyncio.Event()

    async def on_bus_message(self, message: BusMessage) -> None:
        if not message.system:
            self.kept.append(message)
            self.arrived.set()
        await super().on_bus_message(message)


class RemotePeer:
    """The remote worker ``name`` of a link to ``url``, for tests.

    Args:
        url: the route's WebSocket URL.
        name: this peer's worker name (the route's remote worker name).
        remote_worker_name: the app's worker this peer talks to.
        headers: handshake headers (credentials), as for :class:`WebSocketProxyClient`.
        serializer: the codec (default JSON).
        ready_timeout: seconds to wait, on entering, for the app's worker to be ready.
        **proxy_options: more options of :class:`WebSocketProxyClient`; reconnecting is off
            unless given (a test sees a dropped link).
    """

    def __init__(
        self,
        url: str,
        name: str,
        *,
        remote_worker_name: str,
        headers: Mapping[str, str] | None = None,
        serializer: MessageSerializer | None = None,
        ready_timeout: float = 10.0,
        **proxy_options: Any,
    ) -> None:
        self.name = name
        self.remote_worker_name = remote_worker_name
        self.ready_timeout = ready_timeout
        self.runner = WorkerRunner(name=f"peer-{name}", handle_sigint=False)
        self.worker = _Recorder(name)
        proxy_options.setdefault("reconnect", ReconnectPolicy(max_attempts=1))
        self.proxy = WebSocketProxyClient(
            f"peer-link-{name}",
            url=url,
            remote_worker_name=remote_worker_name,
            local_worker_name=name,
            headers=headers,
            serializer=serializer,
            active=True,
            **proxy_options,
        )

    @property
    def stats(self) -> LinkStats:
        """The link's counters (messages, refusals by reason, reconnects...)."""
        return self.proxy.stats

    async def __aenter__(self) -> RemotePeer:
        await self.runner.start()
        try:
            await self.runner.add_workers(self.worker, self.proxy)
            # Fails at once (WorkerUnreachableError, the link's error as its cause) when the
            # link gives up; TimeoutError when the worker is not ready in time.
            await self.runner.registry.wait_ready(self.remote_worker_name, self.ready_timeout)
        except BaseException:
            await self.runner.cancel("test peer failed to start")
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cancel("test over")

    async def job(
        self, job_name: str | None = None, *, payload: dict[str, Any] | None = None,
        timeout: float = 10.0,
    ) -> dict[str, Any]:
        """Run a job on the app's worker; its response. Raises what a job raises
        (:class:`~fastapi_busproxy.JobError` and its subclasses)."""
        async with self.worker.job(
            self.remote_worker_name, name=job_name, payload=payload, timeout=timeout
        ) as job:
            pass
        return job.response

    async def send(self, message: BusMessage) -> None:
        """Send ``message`` (its source this peer, its target the app's worker) over the
        link."""
        await self.worker.send_bus_message(message)

    async def expect(self, message_type: type[_M], *, timeout: float = 5.0) -> _M:
        """The next message of ``message_type`` that reached this peer (waiting for it);
        messages of other types stay for later calls.

        Raises:
            TimeoutError: none came within ``timeout`` seconds.
        """

        async def first() -> _M:
            kept = self.worker.kept
            while True:
                for message in kept:
                    if isinstance(message, message_type):
                        kept.remove(message)
                        return message
                self.worker.arrived.clear()
                await self.worker.arrived.wait()

        try:
            return await asyncio.wait_for(first(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(
                f"no {message_type.__name__} reached {self.name!r} within {timeout}s"
            ) from None
