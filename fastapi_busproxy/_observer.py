"""An app's watch on its bus: what the metrics and the status page read.

One :class:`Observer` per app (in ``app.state``), made by the first of them included. It keeps
the counters of links that have ended (a finished listener on the app's runner, attached when
the app starts and again whenever the app's runner is another one), the last refusal of each
link, and a flag that ends the status page's event streams on shutdown.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from ._flag import Flag
from .lifespan import runner_of
from .runner import WorkerRunner
from .snapshot import EndedLinks, RefusalLog, bus_snapshot

STATE_KEY = "busproxy_observer"


class Observer:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.ended = EndedLinks()
        self.refusals = RefusalLog()
        self.closing = Flag()  # set on shutdown: the event streams end
        self.streams = 0  # event streams open now
        self.no_streams = Flag()  # set while none is open
        self.no_streams.set()
        self._runner: WorkerRunner | None = None
        # WebSocket handshakes the app refused, by route path and HTTP status (HandshakeCounter).
        self.handshakes_refused: dict[tuple[str, int], int] = {}
        self.counting_handshakes = False

    def handshake_refused(self, path: str, status: int) -> None:
        key = (path, status)
        self.handshakes_refused[key] = self.handshakes_refused.get(key, 0) + 1

    def count_handshakes(self) -> None:
        """Count the app's refused WebSocket handshakes from now on (once per app; before
        the app starts: it is a middleware)."""
        if not self.counting_handshakes:
            self.counting_handshakes = True
            self.app.add_middleware(HandshakeCounter, observer=self)

    def runner(self) -> WorkerRunner:
        """The app's runner, with our listener on it."""
        runner = runner_of(self.app)
        if runner is not self._runner:
            if self._runner is not None:
                self._runner.remove_finished_listener(self.ended.add)
            runner.add_finished_listener(self.ended.add)
            self._runner = runner
        return runner

    def snapshot(self) -> dict[str, Any]:
        snapshot = bus_snapshot(
            self.runner(), now=time.time(), ended=self.ended, refusals=self.refusals
        )
        snapshot["handshakes_refused"] = [
            {"path": path, "status": status, "count": count}
            for (path, status), count in sorted(self.handshakes_refused.items())
        ]
        return snapshot


    def stream_opened(self) -> None:
        self.streams += 1
        self.no_streams.clear()

    def stream_closed(self) -> None:
        self.streams -= 1
        if self.streams == 0:
            self.no_streams.set()


def observer_of(app: Any) -> Observer:
    observer: Observer | None = getattr(app.state, STATE_KEY, None)
    if observer is None:
        observer = Observer(app)
        setattr(app.state, STATE_KEY, observer)
    return observer


def close_streams(app: Any) -> None:
    """End the status page's event streams of ``app`` (an ASGI server waits for them)."""
    observer: Observer | None = getattr(getattr(app, "state", None), STATE_KEY, None)
    if observer is not None:
        observer.closing.set()


@asynccontextmanager
async def observer_lifespan(app: Any) -> AsyncIterator[None]:
    """Watch the app's runner from the start (a link that comes and goes before the first
    reading still counts), and end the event streams on shutdown."""
    observer = observer_of(app)
    observer.closing.clear()
    observer.runner()
    try:
        yield
    finally:
        observer.closing.set()


NO_ROUTE = "(no route)"
"""The path label of a handshake no route took (Starlette answers it with 403)."""


class HandshakeCounter:
    """ASGI middleware: counts the WebSocket handshakes the app refuses, by the route's path
    and the HTTP status the client gets (a close before accepting is a 403; a denial response
    has its own). A refused handshake never reaches the route's code, so this is where it can
    be seen. After the accept, it only passes messages on."""

    def __init__(self, app: Any, observer: Observer) -> None:
        self.app = app
        self.observer = observer

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        accepted = False

        async def watched(message: Any) -> None:
            nonlocal accepted
            if not accepted:
                kind = message["type"]
                if kind == "websocket.accept":
                    accepted = True
                elif kind == "websocket.close":
                    self._refused(scope, 403)
                    accepted = True  # nothing more to count on this connection
                elif kind == "websocket.http.response.start":
                    self._refused(scope, int(message.get("status", 403)))
                    accepted = True
            await send(message)

        await self.app(scope, receive, watched)

    def _refused(self, scope: Any, status: int) -> None:
        route = scope.get("route")
        path = getattr(route, "path", None)
        self.observer.handshake_refused(path if isinstance(path, str) else NO_ROUTE, status)
