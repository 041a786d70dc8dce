"""The serving half of a worker: the jobs it was asked to run and has not yet answered.

Each request runs its handler (an ``@job`` method, or ``on_job_request``) in a task of its own,
so the worker keeps receiving messages meanwhile. A job stays *active* until it is answered:
by :meth:`JobServer.respond`, the end of its stream, the handler returning a dict (completed)
or raising (``error``), or a cancellation (``cancelled``). A handler that returns ``None``
leaves the job active, to be answered later (from an event handler, a queue, another task).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import BusError, ConfigurationError, InvalidStateError
from ..messages import (
    BusJobRequestMessage,
    BusJobResponseMessage,
    BusJobResponseUrgentMessage,
    BusJobStreamDataMessage,
    BusJobStreamEndMessage,
    BusJobStreamStartMessage,
    BusJobUpdateMessage,
    BusJobUpdateUrgentMessage,
    BusMessage,
    JobStatus,
)

__all__ = ["DEFAULT_JOB_LIMITS", "JobHandler", "JobLimits", "JobServer"]

logger = logging.getLogger(__name__)

JobHandler = Callable[[BusJobRequestMessage], Awaitable[Any]]
Send = Callable[[BusMessage], Awaitable[None]]
Spawn = Callable[[Coroutine[Any, Any, Any], str], "asyncio.Task[Any]"]

CANCEL_GRACE = 1.0
"""Seconds a cancelled handler gets to unwind before the worker goes on without it."""


@dataclass(frozen=True)
class JobLimits:
    """How many jobs a worker serves at once: past either limit, further requests wait in the
    worker's queue (and their senders, when it is full, wait too: backpressure up to the
    socket of the peer that sends them), while other senders' requests go on.

    Attributes:
        max_jobs: unanswered jobs in flight, from everyone.
        max_jobs_per_source: unanswered jobs in flight from one requester (one link's remote
            worker, or one local worker). Keeps one peer from taking every place.
    """

    max_jobs: int = 1000
    max_jobs_per_source: int = 16

    def __post_init__(self) -> None:
        if self.max_jobs < 1 or self.max_jobs_per_source < 1:
            raise ConfigurationError(f"job limits must be at least 1, not {self}")


DEFAULT_JOB_LIMITS = JobLimits()


@dataclass
class JobStats:
    """What a worker's served jobs came to: how many ended with each status (a stream's end
    counts as ``"streamed"``), and the seconds they took, in all (the mean is
    ``seconds / sum(by_status.values())``)."""

    by_status: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def record(self, status: str, seconds: float) -> None:
        self.by_status[status] = self.by_status.get(status, 0) + 1
        self.seconds += seconds


class JobServer:
    """The jobs a worker serves. ``active_jobs`` maps each unanswered job id to its request.

    ``on_room`` is called whenever a job is answered: a request held back by the limits may
    now be admitted.
    """

    def __init__(
        self,
        owner: str,
        send: Send,
        spawn: Spawn,
        limits: JobLimits = DEFAULT_JOB_LIMITS,
        on_room: Callable[[], None] | None = None,
    ) -> None:
        self.owner = owner
        self.limits = limits
        self.active_jobs: dict[str, BusJobRequestMessage] = {}
        self._send = send
        self._spawn = spawn
        self._on_room = on_room
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._per_source: dict[str, int] = {}
        self._started: dict[str, float] = {}  # each active job's start (time.monotonic())
        self.stats = JobStats()

    def has_room(self, source: str) -> bool:
        """Whether a request from ``source`` may start now (see :class:`JobLimits`)."""
        limits = self.limits
        return (
            len(self.active_jobs) < limits.max_jobs
            and self._per_source.get(source, 0) < limits.max_jobs_per_source
        )

    def _answered(self, job_id: str, status: str = "unanswered") -> None:
        request = self.active_jobs.pop(job_id, None)
        if request is None:
            return
        started = self._started.pop(job_id, None)
        if started is not None:
            self.stats.record(status, time.monotonic() - started)
        left = self._per_source[request.source] - 1
        if left:
            self._per_source[request.source] = left
        else:
            del self._per_source[request.source]
        if self._on_room is not None:
            self._on_room()

    def requester_of(self, job_id: str) -> str | None:
        request = self.active_jobs.get(job_id)
        return request.source if request is not None else None

    def start(self, message: BusJobRequestMessage, handler: JobHandler, sequential: bool) -> None:
        """Run ``handler`` on ``message`` in a task; the job is active from now on."""
        job_id = message.job_id
        self.active_jobs[job_id] = message
        self._started[job_id] = time.monotonic()
        self._per_source[message.source] = self._per_source.get(message.source, 0) + 1
        lock = None
        if sequential and message.job_name:
            lock = self._locks.setdefault(message.job_name, asyncio.Lock())
        self._tasks[job_id] = self._spawn(
            self._run(message, handler, lock), f"job:{message.job_name or 'default'}:{job_id}"
        )

    async def _run(
        self, message: BusJobRequestMessage, handler: JobHandler, lock: asyncio.Lock | None
    ) -> None:
        job_id = message.job_id
        try:
            if lock is not None:
                async with lock:
                    result = await handler(message)
            else:
                result = await handler(message)
        except asyncio.CancelledError:
            raise  # whoever cancelled the handler answers the requester
        except Exception as exc:
            logger.exception("worker %s: job %s failed", self.owner, job_id)
            if job_id in self.active_jobs:
                await self._respond_quietly(job_id, JobStatus.ERROR, {"error": str(exc)})
        else:
            if result is not None and job_id in self.active_jobs:
                if isinstance(result, dict):
                    await self._respond_quietly(job_id, JobStatus.COMPLETED, result)
                else:
                    logger.error(
                        "worker %s: the handler of job %s returned %s, not a dict or None",
                        self.owner,
                        job_id,
                        type(result).__name__,
                    )
                    await self._respond_quietly(
                        job_id, JobStatus.ERROR, {"error": "invalid job result"}
                    )
        finally:
            if self._tasks.get(job_id) is asyncio.current_task():
                del self._tasks[job_id]

    async def cancel(self, job_id: str) -> bool:
        """Cancel the handler of an active job; ``False`` if the job is not active."""
        if job_id not in self.active_jobs:
            return False
        task = self._tasks.pop(job_id, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.wait((task,), timeout=CANCEL_GRACE)
        return True

    async def stop(self) -> None:
        """Answer every active job ``cancelled`` and cancel every handler (the worker stops)."""
        for job_id in list(self.active_jobs):
            await self._respond_quietly(job_id, JobStatus.CANCELLED, None)
        tasks = [task for task in self._tasks.values() if task is not asyncio.current_task()]
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CANCEL_GRACE)

    # -- answering ----------------------------------------------------------------------------

    def _request(self, job_id: str, what: str) -> BusJobRequestMessage:
        request = self.active_jobs.get(job_id)
        if request is None:
            raise InvalidStateError(
                f"worker {self.owner!r} has no active job {job_id!r} to {what}"
                " (it was answered already, or never requested)"
            )
        return request

    async def respond(
        self,
        job_id: str,
        response: dict[str, Any] | None,
        status: JobStatus | str,
        urgent: bool,
    ) -> None:
        request = self._request(job_id, "respond to")
        cls = BusJobResponseUrgentMessage if urgent else BusJobResponseMessage
        await self._send(
            cls(
                source=self.owner,
                target=request.source,
                job_id=job_id,
                status=JobStatus(status),
                response=response,
            )
        )
        self._answered(job_id, JobStatus(status).value)

    async def _respond_quietly(
        self, job_id: str, status: JobStatus, response: dict[str, Any] | None
    ) -> None:
        try:
            await self.respond(job_id, response, status, False)
        except (BusError, InvalidStateError) as exc:
            self._answered(job_id)
            logger.debug("worker %s: could not answer job %s: %s", self.owner, job_id, exc)

    async def update(self, job_id: str, update: dict[str, Any] | None, urgent: bool) -> None:
        request = self._request(job_id, "update")
        cls = BusJobUpdateUrgentMessage if urgent else BusJobUpdateMessage
        await self._send(
            cls(source=self.owner, target=request.source, job_id=job_id, update=update)
        )

    async def stream(
        self,
        job_id: str,
        cls: type[BusJobStreamStartMessage | BusJobStreamDataMessage | BusJobStreamEndMessage],
        data: dict[str, Any] | None,
    ) -> None:
        request = self._request(job_id, "stream")
        await self._send(cls(source=self.owner, target=request.source, job_id=job_id, data=data))
        if cls is BusJobStreamEndMessage:
            self._answered(job_id, "streamed")
