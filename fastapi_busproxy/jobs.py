"""Jobs: a request to another worker (local or remote) answered with updates, a stream and a
final response.

The requester side holds a :class:`Job` (from :meth:`BaseWorker.job` or
:meth:`BaseWorker.start_job`); the serving side implements
:meth:`BaseWorker.on_job_request`. See :mod:`fastapi_busproxy.worker`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from .exceptions import JobCancelledError, JobError, JobFailedError, JobTimeoutError
from .messages import (
    BusJobStreamDataMessage,
    BusJobStreamEndMessage,
    BusJobStreamStartMessage,
    BusJobUpdateMessage,
    BusJobUpdateUrgentMessage,
    JobStatus,
)

if TYPE_CHECKING:
    from .worker import BaseWorker

__all__ = ["DEFAULT_JOB_EVENT_BUFFER", "Job", "JobEvent", "JobStatus"]

logger = logging.getLogger(__name__)

JobEvent = (
    BusJobUpdateMessage
    | BusJobUpdateUrgentMessage
    | BusJobStreamStartMessage
    | BusJobStreamDataMessage
    | BusJobStreamEndMessage
)
"""What ``async for event in job`` yields: updates and stream messages, in arrival order."""

DEFAULT_JOB_EVENT_BUFFER = 1000
"""Events a :class:`Job` keeps for its reader; past that the oldest is dropped and counted."""


class Job:
    """The requester's handle on a job.

    ``async for event in job`` yields the updates and stream chunks as they arrive and ends
    when the final response has arrived. :meth:`wait` returns the response or raises.

    Events are buffered up to ``max_events``; a reader that falls further behind loses the
    oldest events, counted in :attr:`dropped_events` and logged, so that a slow reader never
    stalls the worker that owns the job.

    Attributes:
        job_id: the job's identifier (a UUID string).
        target: name of the serving worker.
        name: the job's name, if any.
        status: the final :class:`JobStatus`, ``None`` while the job runs.
        response: the final response payload (after completion).
        dropped_events: events lost because the reader fell behind.
    """

    def __init__(
        self,
        worker: BaseWorker,
        job_id: str,
        target: str,
        name: str | None,
        *,
        max_events: int = DEFAULT_JOB_EVENT_BUFFER,
    ) -> None:
        self.job_id = job_id
        self.target = target
        self.name = name
        self.status: JobStatus | None = None
        self.response: dict[str, Any] | None = None
        self.dropped_events = 0
        self._worker = worker
        self._max_events = max_events
        self._events: deque[JobEvent] = deque()
        self._changed = asyncio.Event()
        self._error: JobError | None = None
        self._deadline: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"<Job {self.job_id} {self.name or ''} -> {self.target} status={self.status}>"

    @property
    def done(self) -> bool:
        """``True`` once the final status is known."""
        return self.status is not None

    @property
    def error(self) -> JobError | None:
        """The exception :meth:`wait` raises, once the job ended without completing."""
        return self._error

    def __aiter__(self) -> AsyncIterator[JobEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[JobEvent]:
        while True:
            while self._events:
                yield self._events.popleft()
            if self.done:
                return
            self._changed.clear()
            await self._changed.wait()

    async def wait(self, timeout: float | None = None) -> dict[str, Any] | None:
        """Wait for the final response and return its payload.

        Raises:
            JobFailedError: the serving worker answered ``failed`` or ``error``.
            JobCancelledError: the job was cancelled by either side.
            JobTimeoutError: the job's deadline passed, or ``timeout`` seconds passed here
                (then the job goes on; call :meth:`cancel` to stop it).
        """
        if not self.done:
            try:
                await asyncio.wait_for(self._wait_done(), timeout)
            except asyncio.TimeoutError:
                raise JobTimeoutError(
                    f"job {self.job_id} on {self.target!r} gave no answer within {timeout}s",
                    job_id=self.job_id,
                ) from None
        if self._error is not None:
            raise self._error
        return self.response

    async def _wait_done(self) -> None:
        while not self.done:
            self._changed.clear()
            await self._changed.wait()

    async def cancel(self, reason: str | None = None) -> None:
        """Ask the serving worker to cancel the job; the job ends as cancelled here at once."""
        await self._worker.cancel_job(self.job_id, reason)

    # -- called by the owning worker ----------------------------------------------------------

    def _push(self, event: JobEvent) -> None:
        if len(self._events) >= self._max_events:
            self._events.popleft()
            self.dropped_events += 1
            if self.dropped_events == 1 or self.dropped_events % 1000 == 0:
                logger.warning(
                    "job %s of %s: reader is behind, dropped %d events",
                    self.job_id,
                    self._worker.name,
                    self.dropped_events,
                )
        self._events.append(event)
        self._changed.set()

    def _finish(
        self, status: JobStatus, response: dict[str, Any] | None, reason: str | None = None
    ) -> None:
        if self.done:
            return
        self.status = status
        self.response = response
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        where = f"job {self.job_id}{f' ({self.name})' if self.name else ''} on {self.target!r}"
        if status is JobStatus.CANCELLED:
            self._error = JobCancelledError(
                f"{where} was cancelled{f': {reason}' if reason else ''}",
                job_id=self.job_id,
                status=status.value,
                response=response,
            )
        elif status in (JobStatus.FAILED, JobStatus.ERROR):
            detail = reason or (response or {}).get("error")
            self._error = JobFailedError(
                f"{where} ended with status {status.value!r}{f': {detail}' if detail else ''}",
                job_id=self.job_id,
                status=status.value,
                response=response,
            )
        self._changed.set()

    def _time_out(self, timeout: float) -> None:
        if self.done:
            return
        self.status = JobStatus.CANCELLED
        self._error = JobTimeoutError(
            f"job {self.job_id} on {self.target!r} gave no answer within {timeout}s",
            job_id=self.job_id,
        )
        self._changed.set()
