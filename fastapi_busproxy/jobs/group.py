"""The requester's side of a job: a :class:`JobGroup` of one or more serving workers, and the
``async with`` forms that run one (:class:`JobContext`) or several (:class:`JobGroupContext`).

A single job is a group of one. The group completes when every member has answered (a
response, or the end of its stream), and fails when the requester cancels it, its timeout
passes, or a member answers ``error`` or ``failed`` while ``cancel_on_error`` is set.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ..exceptions import (
    BusError,
    InvalidStateError,
    JobCancelledError,
    JobError,
    JobFailedError,
    JobGroupError,
    JobTimeoutError,
)
from ..messages import JobStatus
from .params import JobEvent, JobGroupEvent, JobGroupParams, JobParams

if TYPE_CHECKING:
    from .worker_jobs import WorkerJobs

__all__ = ["DEFAULT_JOB_EVENT_BUFFER", "JobContext", "JobGroup", "JobGroupContext"]

logger = logging.getLogger(__name__)

DEFAULT_JOB_EVENT_BUFFER = 1000
"""Events a job keeps for its ``async for`` reader; past that the oldest is dropped, counted."""

TIMEOUT = "timeout"
CANCELLED = "cancelled"
ERRORED = "errored"


class JobGroup:
    """What a requester knows of a job it sent: members, answers, events, outcome.

    Attributes:
        job_id: the identifier shared by every member's request.
        worker_names: the members, in the order they were asked.
        responses: answers so far by worker name (``{}`` for an answer without data).
        statuses: the status each member answered with (a stream's end counts as completed).
        terminated: members that have answered.
        cancel_on_error / label / cancellable: from the :class:`JobGroupParams`.
        dropped_events: events lost because the ``async for`` reader fell behind.
    """

    def __init__(
        self,
        job_id: str,
        worker_names: list[str],
        *,
        cancel_on_error: bool = True,
        label: str | None = None,
        cancellable: bool = True,
        max_events: int = DEFAULT_JOB_EVENT_BUFFER,
    ) -> None:
        self.job_id = job_id
        self.worker_names = worker_names
        self.responses: dict[str, dict[str, Any]] = {}
        self.statuses: dict[str, JobStatus] = {}
        self.terminated: set[str] = set()
        self.cancel_on_error = cancel_on_error
        self.label = label
        self.cancellable = cancellable
        self.dropped_events = 0
        self.failure: str | None = None
        self.failure_kind: str | None = None
        self._max_events = max_events
        self._events: deque[JobGroupEvent] | None = None
        self._done = False
        self._changed = asyncio.Event()
        self._deadline: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        state = "done" if self._done else "running"
        return f"<JobGroup {self.job_id} {self.worker_names} {state}>"

    @property
    def is_done(self) -> bool:
        """Whether the group has completed or failed."""
        return self._done

    async def wait(self) -> None:
        """Wait until every member has answered.

        Raises:
            JobGroupError: the group failed (a member's error, a cancellation, its timeout).
        """
        while not self._done:
            self._changed.clear()
            await self._changed.wait()
        if self.failure_kind is not None:
            raise JobGroupError(
                self.failure or "job group failed", job_id=self.job_id, responses=self.responses
            )

    # -- called by the requesting worker ------------------------------------------------------

    def listen(self) -> None:
        """Keep events for an ``async for`` reader from now on."""
        if self._events is None:
            self._events = deque()

    def push(self, event: JobGroupEvent) -> None:
        events = self._events
        if events is None or self._done:
            return
        if len(events) >= self._max_events:
            events.popleft()
            self.dropped_events += 1
            if self.dropped_events == 1 or self.dropped_events % 1000 == 0:
                logger.warning(
                    "job %s: the reader is behind; dropped %d events",
                    self.job_id,
                    self.dropped_events,
                )
        events.append(event)
        self._changed.set()

    def answer(self, worker_name: str, status: JobStatus, response: dict[str, Any] | None) -> bool:
        """Record a member's answer; returns ``True`` once every member has answered."""
        self.terminated.add(worker_name)
        self.statuses[worker_name] = status
        self.responses[worker_name] = response or {}
        return set(self.worker_names) <= self.responses.keys()

    def complete(self) -> None:
        self._finish()

    def fail(self, reason: str | None, kind: str = CANCELLED) -> None:
        if self._done:
            return
        self.failure = reason
        self.failure_kind = kind
        self._finish()

    def _finish(self) -> None:
        self._done = True
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._changed.set()

    async def next_event(self) -> JobGroupEvent | None:
        """The next event, or ``None`` once the group is done and its events are read."""
        while True:
            if self._events:
                return self._events.popleft()
            if self._done or self._events is None:
                return None
            self._changed.clear()
            await self._changed.wait()


class _Context:
    """What :class:`JobContext` and :class:`JobGroupContext` share: start on enter, wait (or
    cancel) on exit."""

    def __init__(self, worker: WorkerJobs, worker_names: list[str], params: JobGroupParams):
        self._worker = worker
        self._worker_names = worker_names
        self._params = params
        self._group: JobGroup | None = None

    def _started(self) -> JobGroup:
        if self._group is None:
            raise InvalidStateError("the job has not been started: use it in `async with`")
        return self._group

    @property
    def job_id(self) -> str:
        """The job's identifier (once the ``async with`` block has started)."""
        return self._started().job_id

    @property
    def group(self) -> JobGroup:
        """The :class:`JobGroup` behind this context."""
        return self._started()

    async def _enter(self) -> None:
        self._group = await self._worker.create_job_group_and_request_job(
            list(self._worker_names), params=self._params
        )
        self._group.listen()

    async def _exit(self, failed: bool) -> None:
        group = self._started()
        if failed:
            if not group.is_done:
                try:
                    # Shielded: the job is cancelled on the serving side even when the block
                    # is left by a cancellation of the caller.
                    await asyncio.shield(
                        self._worker.cancel_job_group(
                            group.job_id, reason="context exited with error"
                        )
                    )
                except BusError as exc:
                    logger.debug("job %s: could not send its cancellation: %s", group.job_id, exc)
            return
        await group.wait()


class JobContext(_Context):
    """``async with worker.job(name, ...) as job``: a job sent to one worker.

    On entering, waits for the worker to be ready and sends the request. ``async for event in
    job`` yields :class:`~fastapi_busproxy.jobs.JobEvent` updates and stream chunks until the
    answer arrives. On leaving normally, waits for the answer: :attr:`response` is its data
    (``{}`` when it had none, or for a ``cancelled`` answer of the serving side). Leaving with an
    exception cancels the job on the serving side.

    Raises (all :class:`~fastapi_busproxy.JobError`):
        WorkerNotReadyError: on entering, the worker was not ready within the timeout.
        JobFailedError: the worker answered ``error`` or ``failed``.
        JobTimeoutError: no answer within the timeout.
        JobCancelledError: the requester cancelled the job, or stopped.
    """

    def __init__(self, worker: WorkerJobs, worker_name: str, *, params: JobParams | None = None):
        params = params or JobParams()
        super().__init__(worker, [worker_name], JobGroupParams(**params.model_dump()))
        self._worker_name = worker_name

    @property
    def response(self) -> dict[str, Any]:
        """The answer's data (``{}`` until it has arrived)."""
        return self._started().responses.get(self._worker_name, {})

    @property
    def status(self) -> JobStatus | None:
        """The status the worker answered with, ``None`` until then."""
        return self._started().statuses.get(self._worker_name)

    def __aiter__(self) -> JobContext:
        return self

    async def __anext__(self) -> JobEvent:
        if self._group is None:
            raise StopAsyncIteration
        event = await self._group.next_event()
        if event is None:
            raise StopAsyncIteration
        return JobEvent(type=event.type, data=event.data)

    async def __aenter__(self) -> JobContext:
        await self._enter()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        try:
            await self._exit(exc_type is not None)
        except JobGroupError:
            raise self._error() from None
        return False

    def _error(self) -> JobError:
        group = self._started()
        where = f"job {group.job_id} on {self._worker_name!r}"
        reason = group.failure or "failed"
        if group.failure_kind == TIMEOUT:
            return JobTimeoutError(f"{where}: no answer in time ({reason})", job_id=group.job_id)
        if group.failure_kind == ERRORED:
            status = group.statuses.get(self._worker_name)
            response = group.responses.get(self._worker_name)
            detail = (response or {}).get("error")
            return JobFailedError(
                f"{where} answered {status.value if status else 'error'!r}"
                + (f": {detail}" if detail else ""),
                job_id=group.job_id,
                status=status.value if status else None,
                response=response,
            )
        return JobCancelledError(f"{where} was cancelled: {reason}", job_id=group.job_id)


class JobGroupContext(_Context):
    """``async with worker.job_group(a, b, ...) as group``: one job sent to several workers.

    ``async for event in group`` yields :class:`~fastapi_busproxy.jobs.JobGroupEvent` from
    every member. On leaving normally, waits for every answer: :attr:`responses` maps each
    worker to its data.

    Raises:
        WorkerNotReadyError: on entering, a member was not ready within the timeout.
        JobGroupError: the group failed (a member's error with ``cancel_on_error``, a
            cancellation, the timeout); its ``responses`` holds the answers that arrived.
    """

    def __init__(
        self,
        worker: WorkerJobs,
        worker_names: tuple[str, ...] | list[str],
        *,
        params: JobGroupParams | None = None,
    ):
        super().__init__(worker, list(worker_names), params or JobGroupParams())

    @property
    def responses(self) -> dict[str, dict[str, Any]]:
        """The answers so far, by worker name."""
        return self._started().responses

    def __aiter__(self) -> JobGroupContext:
        return self

    async def __anext__(self) -> JobGroupEvent:
        if self._group is None:
            raise StopAsyncIteration
        event = await self._group.next_event()
        if event is None:
            raise StopAsyncIteration
        return event

    async def __aenter__(self) -> JobGroupContext:
        await self._enter()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        await self._exit(exc_type is not None)
        return False
