"""The requesting half of a worker: the job groups it sent and what their answers mean.

:class:`JobRequester` keeps the state and sends the requests and cancellations; the worker that
owns it calls its hooks (``on_job_response``, ``on_job_completed``, ...) on the outcomes it
reports. Answers are accepted only from a member of the job they name: anything else is a
stray or forged message and is dropped (logged at debug level). A late answer to a job that
ended here (cancelled, timed out) still reaches ``on_job_response``, as the reference delivers
it; a bounded memory of recent jobs tells it apart from a stray.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from ..exceptions import BusError, WorkerNotReadyError, WorkerUnreachableError
from ..messages import BusJobCancelMessage, BusJobRequestMessage, BusMessage, JobStatus
from ..registry import WorkerRegistry
from .group import CANCELLED, TIMEOUT, JobGroup
from .params import JobGroupParams

__all__ = ["Answer", "JobRequester"]

logger = logging.getLogger(__name__)

RECENT_JOBS = 256
"""Ended jobs remembered so that their late answers are told apart from strays."""

Send = Callable[[BusMessage], Awaitable[None]]
Spawn = Callable[[Coroutine[Any, Any, Any], str], Any]


class Answer(enum.Enum):
    """What an answer (a response, or the end of a stream) did to its job."""

    STRAY = "stray"  # no job of ours, or not from one of its members: ignore
    LATE = "late"  # a job that already ended here: hooks only
    RECORDED = "recorded"  # the group waits for other members
    COMPLETED = "completed"  # every member has answered
    ERRORED = "errored"  # a member failed and the group cancels on error


class JobRequester:
    """The job groups a worker has sent and not yet seen end."""

    def __init__(self, owner: str, send: Send, spawn: Spawn, *, max_events: int) -> None:
        self.owner = owner
        self.groups: dict[str, JobGroup] = {}
        self._send = send
        self._spawn = spawn
        self._max_events = max_events
        self._recent: OrderedDict[str, frozenset[str]] = OrderedDict()

    async def start(
        self, worker_names: list[str], params: JobGroupParams, registry: WorkerRegistry
    ) -> JobGroup:
        """Wait until every worker is ready (within the timeout), then send the requests.

        Raises:
            WorkerNotReadyError: a worker was not ready within ``params.timeout``.
        """
        for name in worker_names:
            if not isinstance(name, str):
                raise TypeError(f"worker names are str, not {type(name).__name__}")
        if not all(name in registry for name in worker_names):
            await self._wait_ready(worker_names, params, registry)
        group = JobGroup(
            str(uuid.uuid4()),
            list(worker_names),
            cancel_on_error=params.cancel_on_error,
            label=params.label,
            cancellable=params.cancellable,
            max_events=self._max_events,
        )
        self.groups[group.job_id] = group
        if params.timeout is not None:
            group._deadline = asyncio.get_running_loop().call_later(
                params.timeout, self._timed_out, group.job_id
            )
        try:
            for name in worker_names:
                await self._send(
                    BusJobRequestMessage(
                        source=self.owner,
                        target=name,
                        job_id=group.job_id,
                        job_name=params.name,
                        payload=params.payload,
                    )
                )
        except BaseException:
            self._forget(group)
            group.fail("the request could not be sent", CANCELLED)
            raise
        return group

    def member(self, job_id: str, source: str) -> JobGroup | None:
        """The running group ``job_id`` if ``source`` is one of its members."""
        group = self.groups.get(job_id)
        if group is not None and source in group.worker_names:
            return group
        return None

    async def _wait_ready(
        self, worker_names: list[str], params: JobGroupParams, registry: WorkerRegistry
    ) -> None:
        """Wait until every worker is ready, within ``params.timeout``."""
        waits = [asyncio.ensure_future(registry.wait_ready(name)) for name in worker_names]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), params.timeout)
        except BaseException as exc:
            # One wait failed (an unreachable worker) or timed out: end the others too.
            for wait in waits:
                wait.cancel()
            # (WorkerUnreachableError is a TimeoutError too: it is the cause, not the wait.)
            if isinstance(exc, WorkerUnreachableError) or not isinstance(
                exc, asyncio.TimeoutError
            ):
                raise
            missing = [name for name in worker_names if name not in registry]
            raise WorkerNotReadyError(
                f"{', '.join(repr(n) for n in missing)} not ready within {params.timeout}s"
                " (is it running, and is the proxy to it connected?)"
            ) from None

    def waiting_on(self, worker_name: str) -> list[str]:
        """The running groups that still wait for an answer from ``worker_name``."""
        return [
            job_id
            for job_id, group in self.groups.items()
            if worker_name in group.worker_names
            and worker_name not in group.statuses
            and worker_name not in group.terminated
        ]

    def is_late(self, job_id: str, source: str) -> bool:
        members = self._recent.get(job_id)
        return members is not None and source in members

    def answer(
        self, job_id: str, source: str, status: JobStatus, data: dict[str, Any] | None
    ) -> tuple[Answer, JobGroup | None]:
        """Record an answer from ``source``; the worker then runs the hooks it implies."""
        group = self.member(job_id, source)
        if group is None:
            if self.is_late(job_id, source):
                return Answer.LATE, None
            logger.debug("worker %s: no job %s of %s awaits an answer", self.owner, job_id, source)
            return Answer.STRAY, None
        if status in (JobStatus.ERROR, JobStatus.FAILED) and group.cancel_on_error:
            group.terminated.add(source)
            group.statuses[source] = status
            group.responses[source] = data or {}
            return Answer.ERRORED, group
        if group.answer(source, status, data):
            self._forget(group)
            return Answer.COMPLETED, group
        return Answer.RECORDED, group

    async def cancel(self, job_id: str, reason: str | None, kind: str = CANCELLED) -> bool:
        """End the group here and ask each member to cancel; ``False`` if it is not running."""
        group = self.groups.get(job_id)
        if group is None:
            return False
        self._forget(group)
        try:
            for name in group.worker_names:
                await self._send(
                    BusJobCancelMessage(
                        source=self.owner, target=name, job_id=job_id, reason=reason
                    )
                )
        finally:
            group.fail(reason, kind)
        return True

    def _timed_out(self, job_id: str) -> None:
        if job_id in self.groups:
            self._spawn(self._cancel_quietly(job_id, "timeout", TIMEOUT), f"job-timeout:{job_id}")

    async def _cancel_quietly(self, job_id: str, reason: str, kind: str) -> None:
        try:
            await self.cancel(job_id, reason, kind)
        except BusError as exc:
            logger.debug("worker %s: could not cancel job %s: %s", self.owner, job_id, exc)

    async def stop(self, reason: str) -> None:
        """Cancel every running group (the worker is stopping)."""
        for job_id in list(self.groups):
            await self._cancel_quietly(job_id, reason, CANCELLED)

    def _forget(self, group: JobGroup) -> None:
        self.groups.pop(group.job_id, None)
        self._recent[group.job_id] = frozenset(group.worker_names)
        while len(self._recent) > RECENT_JOBS:
            self._recent.popitem(last=False)
