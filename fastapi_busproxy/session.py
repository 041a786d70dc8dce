"""Sessions: the workers that end together.

:meth:`BaseWorker.end() <fastapi_busproxy.BaseWorker.end>` and ``cancel()`` end the session of
the worker that calls them, and so does an end or cancel message from a remote peer, for the
session of the proxy it arrived through. Every runner has a root session: in a script, ending
it ends the runner, as the reference does. An app serves many connections on one runner, so
each gets a session of its own:

- under :func:`~fastapi_busproxy.include_bus_proxy`, a connection's proxy and its
  ``session_workers``;
- a :class:`~fastapi_busproxy.WebSocketProxyServer` added by hand, the proxy alone;
- :meth:`WorkerRunner.new_session`, for workers an app groups itself.

Ending such a session ends its workers (the proxy closes its connection), never a worker that
other sessions share, and never the runner.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ._flag import Flag

if TYPE_CHECKING:
    from .runner import WorkerRunner
    from .worker import BaseWorker

__all__ = ["WorkerSession"]

logger = logging.getLogger(__name__)


class WorkerSession:
    """A group of workers of one runner that end together.

    Attributes:
        name: the session's name (the runner's own name for its root session).
        root: whether this is the runner's root session, whose end is the runner's.
    """

    def __init__(self, runner: WorkerRunner, name: str, *, root: bool = False) -> None:
        self.name = name
        self.root = root
        self._runner = runner
        self._workers: dict[str, BaseWorker] = {}
        self._ended = Flag()

    def __repr__(self) -> str:
        kind = "root session" if self.root else "session"
        return f"<WorkerSession {self.name!r} {kind} workers={len(self._workers)}>"

    @property
    def workers(self) -> list[BaseWorker]:
        """The session's workers that have not finished."""
        return list(self._workers.values())

    @property
    def ended(self) -> bool:
        """``True`` once a session (not the root) has no worker left."""
        return self._ended.is_set()

    async def end(self, reason: str | None = None) -> None:
        """End every worker of the session after its queued messages. Returns at once."""
        if self.root:
            await self._runner.end(reason)
            return
        logger.info("session %s ending%s", self.name, f": {reason}" if reason else "")
        for worker in list(self._workers.values()):
            await worker._request_end(reason)

    async def cancel(self, reason: str | None = None) -> None:
        """Stop every worker of the session at once."""
        if self.root:
            await self._runner.cancel(reason)
            return
        logger.info("session %s cancelled%s", self.name, f": {reason}" if reason else "")
        await asyncio.gather(*(w._cancel_now(reason) for w in list(self._workers.values())))

    async def wait(self) -> None:
        """Wait until every worker of a (non-root) session has finished."""
        await self._ended.wait()

    def _add(self, worker: BaseWorker) -> None:
        self._workers[worker.name] = worker

    def _remove(self, worker: BaseWorker) -> bool:
        """Forget a finished worker; ``True`` when a non-root session has none left."""
        if self._workers.get(worker.name) is worker:
            del self._workers[worker.name]
        if not self._workers and not self.root:
            self._ended.set()
            return True
        return False
