"""Owned tasks: every background task belongs to an object that cancels and awaits it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

_T = TypeVar("_T")

logger = logging.getLogger(__name__)


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has finished.

    The task's own cancellation is not propagated; a cancellation of the caller is.
    """
    if task is asyncio.current_task():
        return
    task.cancel()
    # asyncio.wait() does not raise the task's CancelledError, only the caller's.
    await asyncio.wait((task,))


class TaskSet:
    """A set of tasks owned by one object (a worker, a link).

    A task that ends is forgotten; one that raised is logged with the owner's name.
    :meth:`cancel_all` cancels every task but the caller's own and waits for them.
    """

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, _T], *, name: str) -> asyncio.Task[_T]:
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.owner}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "task %s of %s failed", task.get_name(), self.owner, exc_info=task.exception()
            )

    async def cancel_all(self, *, grace: float = 1.0, rounds: int = 10) -> None:
        current = asyncio.current_task()
        pending = {task for task in self._tasks if task is not current}
        # Some libraries swallow a cancellation that lands in their I/O (redis-py does in
        # pipelines): cancel again until the task ends, within a bounded wait.
        for _ in range(rounds):
            if not pending:
                return
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=grace)
        if pending:
            logger.error(
                "tasks of %s ignored cancellation: %s",
                self.owner,
                ", ".join(task.get_name() for task in pending),
            )
