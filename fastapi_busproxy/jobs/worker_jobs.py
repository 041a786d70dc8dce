"""The job half of a worker: the requesting and serving methods, hooks and message handling
that :class:`~fastapi_busproxy.BaseWorker` inherits from :class:`WorkerJobs`.

The state lives in the worker's :class:`~.requesting.JobRequester` and
:class:`~.serving.JobServer`; this class turns bus messages into their outcomes and runs the
hooks (``on_job_response``, ``on_job_completed``, ...) and events those outcomes call for.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, ClassVar

from ..exceptions import BusError, InvalidStateError
from ..messages import (
    BusJobCancelMessage,
    BusJobRequestMessage,
    BusJobResponseMessage,
    BusJobResponseUrgentMessage,
    BusJobStreamDataMessage,
    BusJobStreamEndMessage,
    BusJobStreamStartMessage,
    BusJobUpdateMessage,
    BusJobUpdateRequestMessage,
    BusJobUpdateUrgentMessage,
    BusMessage,
    JobStatus,
)
from .group import ERRORED, JobContext, JobGroup, JobGroupContext
from .params import (
    JobGroupEvent,
    JobGroupParams,
    JobGroupResponse,
    JobParams,
    resolve_job_params,
)
from .requesting import Answer, JobRequester
from .serving import JobLimits, JobServer

if TYPE_CHECKING:
    from ..registry import WorkerRegistry

__all__ = ["WorkerJobs"]

logger = logging.getLogger("fastapi_busproxy.worker")

_UPDATES = (BusJobUpdateMessage, BusJobUpdateUrgentMessage)

_STREAM_EVENTS: dict[type[BusMessage], tuple[str, str]] = {
    BusJobUpdateMessage: ("on_job_update", JobGroupEvent.UPDATE),
    BusJobUpdateUrgentMessage: ("on_job_update", JobGroupEvent.UPDATE),
    BusJobStreamStartMessage: ("on_job_stream_start", JobGroupEvent.STREAM_START),
    BusJobStreamDataMessage: ("on_job_stream_data", JobGroupEvent.STREAM_DATA),
    BusJobStreamEndMessage: ("on_job_stream_end", JobGroupEvent.STREAM_END),
}


class WorkerJobs:
    """The jobs a worker requests and serves (a base class of :class:`BaseWorker`)."""

    if TYPE_CHECKING:
        _name: str
        _job_requester: JobRequester | None
        _job_server: JobServer | None
        _job_handlers: dict[str, tuple[Callable[..., Any], bool]]
        job_event_buffer: ClassVar[int]

        @property
        def job_limits(self) -> JobLimits: ...

        def _readmit(self) -> None: ...

        def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]: ...

        @property
        def registry(self) -> WorkerRegistry: ...

        async def send_bus_message(self, message: BusMessage) -> None: ...

        async def _call_event_handler(self, event_name: str, *args: Any) -> None: ...

        def has_event_handlers(self, event_name: str) -> bool: ...

    @property
    def _requester(self) -> JobRequester:
        requester = self._job_requester
        if requester is None:
            requester = self._job_requester = JobRequester(
                self._name, self.send_bus_message, self._spawn, max_events=self.job_event_buffer
            )
            self.registry.add_unreachable_handler(self._target_unreachable)
        return requester

    def _target_unreachable(self, name: str, error: BaseException) -> None:
        """The link to ``name`` gave up: each job in flight with it ends now, as if ``name``
        had answered with an error (the hooks run as for any error), not at its timeout."""
        requester = self._job_requester
        if requester is None:
            return
        for job_id in requester.waiting_on(name):
            answer = BusJobResponseMessage(
                source=name,
                target=self._name,
                job_id=job_id,
                status=JobStatus.ERROR,
                response={"error": f"worker {name!r} is unreachable: {error}"},
            )
            self._spawn(self._on_job_response(answer), name="unreachable")

    @property
    def _server(self) -> JobServer:
        server = self._job_server
        if server is None:
            server = self._job_server = JobServer(
                self._name,
                self.send_bus_message,
                self._spawn,
                self.job_limits,
                self._readmit,
            )
        return server

    def _admit(self, message: BusMessage) -> bool:
        """Whether the bus may hand ``message`` over now: a job request waits while this
        worker serves as many jobs as its :class:`~.serving.JobLimits` allow (in all, or from
        that requester); everything else, and other requesters' jobs, go on meanwhile."""
        if not isinstance(message, BusJobRequestMessage):
            return True
        server = self._job_server
        return server is None or server.has_room(message.source)

    # -- hooks ------------------------------------------------------------------------------

    @property
    def active_jobs(self) -> dict[str, BusJobRequestMessage]:
        """The jobs this worker serves and has not answered yet, by job id."""
        return self._server.active_jobs

    @property
    def job_groups(self) -> dict[str, JobGroup]:
        """The jobs this worker requested that have not ended yet, by job id."""
        return self._requester.groups


    async def on_job_request(self, message: BusJobRequestMessage) -> dict[str, Any] | None:
        """Hook: serve the job ``message`` asks for (jobs no ``@job`` handler claims).

        Runs in a task of its own, so the worker keeps receiving messages meanwhile. Report
        progress with :meth:`send_job_update` and the stream methods. The job is answered by:

        - :meth:`send_job_response`, here or later from anywhere (an event handler, a queue);
        - :meth:`send_job_stream_end`, which ends a streamed job;
        - returning a dict: it is sent as the ``completed`` response;
        - raising: the requester gets status ``error`` with ``{"error": "<message>"}``;
        - cancellation (by the requester, or this worker stopping): status ``cancelled``.

        Returning ``None`` (as the default does) leaves the job open until it is answered.
        A worker that neither overrides this, nor has ``@job`` handlers or an
        ``on_job_request`` event handler, does not serve jobs: requests are answered
        ``error`` at once.
        """
        return None

    async def on_job_response(
        self, message: BusJobResponseMessage | BusJobResponseUrgentMessage
    ) -> None:
        """Hook: a worker answered a job this worker requested (any status)."""

    async def on_job_update(self, message: BusJobUpdateMessage | BusJobUpdateUrgentMessage) -> None:
        """Hook: progress of a job this worker requested."""

    async def on_job_update_requested(self, message: BusJobUpdateRequestMessage) -> None:
        """Hook: the requester of a job this worker serves asks for an update."""

    async def on_job_completed(self, result: JobGroupResponse) -> None:
        """Hook: every worker of a job (group) this worker requested has answered."""

    async def on_job_error(
        self, message: BusJobResponseMessage | BusJobResponseUrgentMessage
    ) -> None:
        """Hook: a worker answered ``error`` or ``failed`` and its group is being cancelled."""

    async def on_job_stream_start(self, message: BusJobStreamStartMessage) -> None:
        """Hook: a worker started streaming the answer of a job this worker requested."""

    async def on_job_stream_data(self, message: BusJobStreamDataMessage) -> None:
        """Hook: a chunk of a streamed answer."""

    async def on_job_stream_end(self, message: BusJobStreamEndMessage) -> None:
        """Hook: a streamed answer ended (its data is that worker's response)."""

    async def on_job_cancelled(self, message: BusJobCancelMessage) -> None:
        """Hook: the requester cancelled a job this worker serves (its handler is cancelled
        already; the requester is answered ``cancelled`` after this)."""

    # -- requesting ---------------------------------------------------------------------

    def job(
        self,
        worker_name: str,
        *,
        params: JobParams | None = None,
        name: str | None = None,
        payload: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> JobContext:
        """A job sent to ``worker_name``, for ``async with``::

            async with self.job("assistant", params=JobParams(payload={"q": "..."})) as job:
                async for event in job:
                    print(event.type, event.data)
            print(job.response)

        ``name``, ``payload`` and ``timeout`` are a shorter spelling of the same ``params``.
        See :class:`~fastapi_busproxy.jobs.JobContext` for what it raises.
        """
        return JobContext(
            self,
            worker_name,
            params=resolve_job_params(
                params, JobParams, name=name, payload=payload, timeout=timeout
            ),
        )

    def job_group(
        self,
        *worker_names: str,
        params: JobGroupParams | None = None,
        name: str | None = None,
        payload: dict[str, Any] | None = None,
        timeout: float | None = None,
        cancel_on_error: bool | None = None,
    ) -> JobGroupContext:
        """One job sent to several workers, for ``async with`` (see
        :class:`~fastapi_busproxy.jobs.JobGroupContext`)."""
        return JobGroupContext(
            self,
            worker_names,
            params=resolve_job_params(
                params,
                JobGroupParams,
                name=name,
                payload=payload,
                timeout=timeout,
                cancel_on_error=cancel_on_error,
            ),
        )

    async def request_job(
        self,
        worker_name: str,
        *,
        params: JobParams | None = None,
        name: str | None = None,
        payload: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> str:
        """Send a job once ``worker_name`` is ready and return its id without waiting for the
        answer, which reaches :meth:`on_job_response` and :meth:`on_job_completed`.

        Raises:
            WorkerNotReadyError: the worker was not ready within the timeout.
        """
        job_params = resolve_job_params(
            params, JobParams, name=name, payload=payload, timeout=timeout
        )
        group = await self.create_job_group_and_request_job(
            [worker_name], params=JobGroupParams(**job_params.model_dump())
        )
        return group.job_id

    async def request_job_group(
        self,
        *worker_names: str,
        params: JobGroupParams | None = None,
        name: str | None = None,
        payload: dict[str, Any] | None = None,
        timeout: float | None = None,
        cancel_on_error: bool | None = None,
    ) -> str:
        """Send one job to several workers and return its id without waiting."""
        group = await self.create_job_group_and_request_job(
            list(worker_names),
            params=resolve_job_params(
                params,
                JobGroupParams,
                name=name,
                payload=payload,
                timeout=timeout,
                cancel_on_error=cancel_on_error,
            ),
        )
        return group.job_id

    async def create_job_group_and_request_job(
        self,
        worker_names: list[str],
        *,
        params: JobGroupParams | None = None,
        name: str | None = None,
        payload: dict[str, Any] | None = None,
        timeout: float | None = None,
        cancel_on_error: bool | None = None,
    ) -> JobGroup:
        """Wait until every worker is ready, then send each the job; returns its group.

        Raises:
            WorkerNotReadyError: a worker was not ready within the timeout.
        """
        group_params = resolve_job_params(
            params,
            JobGroupParams,
            name=name,
            payload=payload,
            timeout=timeout,
            cancel_on_error=cancel_on_error,
        )
        return await self._requester.start(list(worker_names), group_params, self.registry)

    async def cancel_job_group(self, job_id: str, *, reason: str | None = None) -> None:
        """Cancel a job (group) this worker requested: it fails here at once, and each of its
        workers is asked to cancel."""
        await self._requester.cancel(job_id, reason)

    async def request_cancel_job_group(self, job_id: str, *, reason: str | None = None) -> bool:
        """Cancel a job asked from outside (a UI, an operator), if it was sent cancellable."""
        group = self._requester.groups.get(job_id)
        if group is None or not group.cancellable:
            return False
        await self._requester.cancel(job_id, reason)
        return True

    async def request_job_update(self, job_id: str, worker_name: str | None = None) -> None:
        """Ask ``worker_name`` (by default the only worker of the job) for an update."""
        if worker_name is None:
            group = self._requester.groups.get(job_id)
            if group is None or len(group.worker_names) != 1:
                raise InvalidStateError(
                    f"worker {self._name!r}: name the worker to ask about job {job_id!r}"
                )
            worker_name = group.worker_names[0]
        await self.send_bus_message(
            BusJobUpdateRequestMessage(source=self._name, target=worker_name, job_id=job_id)
        )

    # -- serving ------------------------------------------------------------------------

    async def send_job_response(
        self,
        job_id: str,
        response: dict[str, Any] | None = None,
        *,
        status: JobStatus | str = JobStatus.COMPLETED,
        urgent: bool = False,
    ) -> None:
        """Answer a job this worker serves; it is no longer active afterwards.

        Raises:
            InvalidStateError: no such job is active (answered already, or never requested).
        """
        await self._server.respond(job_id, response, status, urgent)

    async def send_job_update(
        self, job_id: str, update: dict[str, Any] | None = None, *, urgent: bool = False
    ) -> None:
        """Send progress of an active job (``urgent``: ahead of queued data messages)."""
        await self._server.update(job_id, update, urgent)

    async def send_job_stream_start(self, job_id: str, data: dict[str, Any] | None = None) -> None:
        """Start streaming the answer of an active job."""
        await self._server.stream(job_id, BusJobStreamStartMessage, data)

    async def send_job_stream_data(self, job_id: str, data: dict[str, Any] | None = None) -> None:
        """Send one chunk of a streamed answer."""
        await self._server.stream(job_id, BusJobStreamDataMessage, data)

    async def send_job_stream_end(self, job_id: str, data: dict[str, Any] | None = None) -> None:
        """End a streamed answer: the job is answered, ``data`` being its response."""
        await self._server.stream(job_id, BusJobStreamEndMessage, data)

    def _serves_jobs(self) -> bool:
        return (
            bool(self._job_handlers)
            or type(self).on_job_request is not WorkerJobs.on_job_request
            or self.has_event_handlers("on_job_request")
        )

    # -- messages -----------------------------------------------------------------------

    async def _on_job_request(self, message: BusMessage) -> None:
        assert isinstance(message, BusJobRequestMessage)
        requester = self._server.requester_of(message.job_id)
        if requester is not None:
            if requester == message.source:
                # A repeat of a running request: answering it would end the original job.
                logger.warning(
                    "worker %s ignored a repeated request for running job %s from %s",
                    self._name,
                    message.job_id,
                    message.source,
                )
            else:
                await self._refuse_job(message, f"job id {message.job_id!r} is already taken")
            return
        handler, sequential = self._job_handlers.get(message.job_name or "", (None, False))
        if handler is None:
            if not self._serves_jobs():
                await self._refuse_job(message, f"worker {self._name!r} does not serve jobs")
                return
            handler = self.on_job_request
        self._server.start(message, handler, sequential)
        await self._call_event_handler("on_job_request", message)

    async def _refuse_job(self, message: BusJobRequestMessage, reason: str) -> None:
        logger.info(
            "worker %s refused job %s from %s: %s",
            self._name,
            message.job_id,
            message.source,
            reason,
        )
        try:
            await self.send_bus_message(
                BusJobResponseMessage(
                    source=self._name,
                    target=message.source,
                    job_id=message.job_id,
                    status=JobStatus.ERROR,
                    response={"error": reason},
                )
            )
        except BusError as exc:
            logger.debug("worker %s could not refuse job %s: %s", self._name, message.job_id, exc)

    async def _on_job_cancel(self, message: BusMessage) -> None:
        assert isinstance(message, BusJobCancelMessage)
        # Only the requester may cancel its job.
        if self._server.requester_of(message.job_id) != message.source:
            return
        if not await self._server.cancel(message.job_id):
            return
        await self.on_job_cancelled(message)
        await self._call_event_handler("on_job_cancelled", message)
        if message.job_id in self._server.active_jobs:
            await self._server.respond(message.job_id, None, JobStatus.CANCELLED, False)

    async def _on_job_update_request(self, message: BusMessage) -> None:
        assert isinstance(message, BusJobUpdateRequestMessage)
        if self._server.requester_of(message.job_id) == message.source:
            await self.on_job_update_requested(message)
            await self._call_event_handler("on_job_update_requested", message)

    async def _on_job_response(self, message: BusMessage) -> None:
        assert isinstance(message, (BusJobResponseMessage, BusJobResponseUrgentMessage))
        outcome, group = self._requester.answer(
            message.job_id, message.source, JobStatus(message.status), message.response
        )
        if outcome is Answer.STRAY:
            return
        await self.on_job_response(message)
        await self._call_event_handler("on_job_response", message)
        if outcome is Answer.ERRORED:
            await self.on_job_error(message)
            await self._call_event_handler("on_job_error", message)
            await self._requester.cancel(
                message.job_id, f"worker {message.source!r} errored", ERRORED
            )
        elif outcome is Answer.COMPLETED:
            assert group is not None
            await self._completed(group)

    async def _on_job_event(self, message: BusMessage) -> None:
        assert isinstance(
            message,
            (
                BusJobUpdateMessage,
                BusJobUpdateUrgentMessage,
                BusJobStreamStartMessage,
                BusJobStreamDataMessage,
                BusJobStreamEndMessage,
            ),
        )
        group = self._requester.member(message.job_id, message.source)
        if group is None and not self._requester.is_late(message.job_id, message.source):
            return
        hook, kind = _STREAM_EVENTS[type(message)]
        await getattr(self, hook)(message)
        await self._call_event_handler(hook, message)
        data = message.update if isinstance(message, _UPDATES) else message.data
        if group is not None:
            group.push(JobGroupEvent(kind, message.source, data))
        if isinstance(message, BusJobStreamEndMessage):
            outcome, group = self._requester.answer(
                message.job_id, message.source, JobStatus.COMPLETED, data
            )
            if outcome is Answer.COMPLETED:
                assert group is not None
                await self._completed(group)

    async def _completed(self, group: JobGroup) -> None:
        result = JobGroupResponse(job_id=group.job_id, responses=group.responses)
        try:
            await self.on_job_completed(result)
            await self._call_event_handler("on_job_completed", result)
        finally:
            group.complete()
