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
        return bus_snapshot(
            self.runner(), now=time.time(), ended=self.ended, refusals=self.refusals
        )


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
