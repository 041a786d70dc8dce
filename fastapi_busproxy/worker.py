"""Workers: named agents on the bus.

A :class:`BaseWorker` is added to a :class:`~fastapi_busproxy.runner.WorkerRunner`, which
attaches it to the bus. From then on the bus delivers to it, one at a time, the messages its
:meth:`~BaseWorker.bus_interest` selects (by default: those targeted at its name, and
broadcasts). A subclass handles its own message types by overriding
:meth:`~BaseWorker.on_bus_message` and calling ``super().on_bus_message(message)`` for the
rest::

    class Greeter(BaseWorker):
        async def on_bus_message(self, message):
            if isinstance(message, Hello):
                await self.send_bus_message(Hello(source=self.name, target=message.source))
            else:
                await super().on_bus_message(message)

Lifecycle: ``CREATED`` -> ``RUNNING`` (ready: registered in the runner's registry) ->
``ENDING`` -> ``FINISHED``. :meth:`~BaseWorker.end` ends after the messages already queued;
:meth:`~BaseWorker.cancel` stops at once. A finished worker cannot be started again.

An inactive worker (``active=False``, or after a deactivation) ignores data messages other than
activation, deactivation and end; system messages (cancel among them) and the answers to its
own jobs still reach it, and a job request sent to it is answered with status ``error``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ._events import EventEmitter
from ._flag import Flag
from ._tasks import TaskSet
from .bus import DirectHandler, Subscription, WorkerBus
from .exceptions import (
    BusError,
    ConfigurationError,
    JobTimeoutError,
)
from .interest import Interest
from .jobs import DEFAULT_JOB_EVENT_BUFFER, Job, JobEvent
from .messages import (
    BusActivateWorkerMessage,
    BusCancelMessage,
    BusCancelWorkerMessage,
    BusDeactivateWorkerMessage,
    BusEndMessage,
    BusEndWorkerMessage,
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
    WorkerRegistryEntry,
)
from .registry import RegistryWatch

if TYPE_CHECKING:
    from .runner import WorkerRunner

__all__ = ["BaseWorker", "WorkerState"]

logger = logging.getLogger(__name__)


class WorkerState(enum.Enum):
    """Where a worker is in its life."""

    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    ENDING = "ending"
    FINISHED = "finished"


# Data messages an inactive worker still takes.
_WHILE_INACTIVE = (
    BusActivateWorkerMessage,
    BusDeactivateWorkerMessage,
    BusEndMessage,
    BusEndWorkerMessage,
    BusJobResponseMessage,
    BusJobUpdateMessage,
    BusJobStreamStartMessage,
    BusJobStreamDataMessage,
    BusJobStreamEndMessage,
)

_JOB_EVENTS = (
    BusJobUpdateMessage,
    BusJobUpdateUrgentMessage,
    BusJobStreamStartMessage,
    BusJobStreamDataMessage,
    BusJobStreamEndMessage,
)


@dataclass
class _ServedJob:
    requester: str
    name: str | None
    task: asyncio.Task[None] | None = None
    answered: bool = False


class BaseWorker(EventEmitter):
    """A named agent on the bus.

    Args:
        name: the worker's name, unique in its runner; messages are targeted at it by name.
        active: whether it starts active (see the module documentation).

    Events (``@worker.event_handler("on_...")``; handlers get the worker first):
        ``on_started(worker)``: the worker is attached and ready.
        ``on_finished(worker)``: the worker has stopped.
        ``on_activated(worker, args)`` / ``on_deactivated(worker)``: activation changed.
        ``on_worker_ready(worker, entry)``: a watched worker is ready (see
        :meth:`watch_workers`); ``entry`` is its
        :class:`~fastapi_busproxy.messages.WorkerRegistryEntry`.

    Hooks to override (call ``super()`` where noted): :meth:`on_start`, :meth:`on_stop`,
    :meth:`on_activated`, :meth:`on_deactivated`, :meth:`on_worker_ready`,
    :meth:`on_bus_message`, :meth:`on_job_request`, :meth:`on_job_update_request`.
    """

    EVENTS: ClassVar[tuple[str, ...]] = (
        "on_started",
        "on_finished",
        "on_activated",
        "on_deactivated",
        "on_worker_ready",
    )

    job_event_buffer: ClassVar[int] = DEFAULT_JOB_EVENT_BUFFER
    """Events each requested :class:`~fastapi_busproxy.jobs.Job` buffers for its reader."""

    def __init__(self, name: str, *, active: bool = True) -> None:
        super().__init__()
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"a worker needs a non-empty str name, not {name!r}")
        self._name = name
        self._active = active
        self._state = WorkerState.CREATED
        self._runner: WorkerRunner | None = None
        self._subscription: Subscription | None = None
        self._tasks = TaskSet(name)
        self._finished = Flag()
        self._finishing: asyncio.Task[None] | None = None
        self._started_at: float | None = None
        self._watches: list[RegistryWatch] = []
        self._requested: dict[str, Job] = {}
        self._served: dict[str, _ServedJob] = {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._name!r} {self._state.value}>"

    # -- properties ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def active(self) -> bool:
        return self._active

    @property
    def state(self) -> WorkerState:
        return self._state

    @property
    def started_at(self) -> float | None:
        """Wall-clock time (``time.time()``) at which the worker became ready."""
        return self._started_at

    @property
    def runner(self) -> WorkerRunner:
        """The runner the worker was added to.

        Raises:
            ConfigurationError: the worker has not been added to a runner yet.
        """
        if self._runner is None:
            raise ConfigurationError(
                f"worker {self._name!r} is not attached: add it with runner.add_workers() first"
            )
        return self._runner

    @property
    def bus(self) -> WorkerBus:
        """The runner's bus (see :attr:`runner`)."""
        return self.runner.bus

    @property
    def subscription(self) -> Subscription | None:
        """The worker's place on the bus (queue length and counters), while it runs."""
        return self._subscription

    def registry_entry(self) -> WorkerRegistryEntry:
        """What the registry (and remote peers) know of this worker."""
        return WorkerRegistryEntry(
            name=self._name, active=self._active, started_at=self._started_at
        )

    def bus_interest(self) -> Interest:
        """What the bus delivers to this worker; override to widen it.

        Default: messages targeted at the worker's name, and broadcasts.
        """
        return Interest.worker(self._name)

    # -- lifecycle ----------------------------------------------------------------------------

    async def _start(self, runner: WorkerRunner) -> None:
        """Attach to ``runner``'s bus and become ready (called by the runner)."""
        if self._state is not WorkerState.CREATED:
            raise ConfigurationError(
                f"worker {self._name!r} was already started ({self._state.value});"
                " a worker runs once: create a new one"
            )
        self._runner = runner
        self._state = WorkerState.STARTING
        self._subscription = await runner.bus.subscribe(
            self._name, self._receive, self.bus_interest(), direct=self._direct_handler()
        )
        try:
            await self.on_start()
        except BaseException:
            await self._finish("on_start() failed", cancelled=True)
            raise
        if self._state is not WorkerState.STARTING:
            return  # on_start() ended or cancelled the worker
        self._state = WorkerState.RUNNING
        self._started_at = time.time()
        runner.registry.register_local(self.registry_entry())
        await self._call_event_handler("on_started")

    async def on_start(self) -> None:
        """Hook: the worker is on the bus and about to become ready."""

    async def on_stop(self) -> None:
        """Hook: the worker is stopping (its jobs are already cancelled)."""

    async def end(self, reason: str | None = None) -> None:
        """End the worker after the messages already queued for it. Returns at once.

        Use :meth:`wait` to wait until it has finished.
        """
        if self._state in (WorkerState.CREATED, WorkerState.STARTING):
            await self._finish(reason, cancelled=False)
            return
        if self._state is not WorkerState.RUNNING:
            return
        try:
            await self.bus.send(
                BusEndWorkerMessage(source=self._name, target=self._name, reason=reason)
            )
        except BusError:
            await self._finish(reason, cancelled=False)

    async def cancel(self, reason: str | None = None) -> None:
        """Stop the worker at once: its jobs are cancelled and queued messages discarded.

        Returns when the worker has finished (at once when called from the worker itself).
        """
        await self._finish(reason, cancelled=True)

    async def wait(self) -> None:
        """Wait until the worker has finished."""
        await self._finished.wait()

    @property
    def finished(self) -> bool:
        return self._state is WorkerState.FINISHED

    async def _finish(self, reason: str | None, *, cancelled: bool) -> None:
        # Stopping runs in a task of its own: a caller that is cancelled meanwhile (an
        # endpoint torn down at shutdown) cannot leave the worker half-stopped, and a caller
        # that is one of the worker's own tasks (which stopping cancels) does not wait on
        # itself.
        if self._finishing is None:
            if self._state is WorkerState.FINISHED:
                return
            self._state = WorkerState.ENDING
            self._finishing = asyncio.get_running_loop().create_task(
                self._stop(reason, cancelled=cancelled), name=f"{self._name}:stop"
            )
        if asyncio.current_task() in self._owned_tasks():
            return
        await asyncio.shield(self._finishing)

    async def _stop(self, reason: str | None, *, cancelled: bool) -> None:
        logger.debug(
            "worker %s %s%s",
            self._name,
            "cancelled" if cancelled else "ending",
            f": {reason}" if reason else "",
        )
        for watch in self._watches:
            watch.cancel()
        self._watches.clear()
        # Serving tasks answer "cancelled" to their requesters as they unwind.
        await self._tasks.cancel_all()
        for job in list(self._requested.values()):
            job._finish(JobStatus.CANCELLED, None, f"requester {self._name!r} stopped")
            # Nobody will read the answer: the serving worker stops too.
            await self._send_quietly(
                BusJobCancelMessage(
                    source=self._name,
                    target=job.target,
                    job_id=job.job_id,
                    reason="requester stopped",
                )
            )
        self._requested.clear()
        try:
            await self.on_stop()
        except Exception:
            logger.exception("on_stop() of worker %s raised", self._name)
        if self._subscription is not None and self._runner is not None:
            await self._runner.bus.unsubscribe(self._subscription)
        self._state = WorkerState.FINISHED
        self._finished.set()
        if self._runner is not None:
            self._runner._worker_finished(self)
        await self._call_event_handler("on_finished")

    def _owned_tasks(self) -> set[asyncio.Task[Any]]:
        tasks = set(self._tasks._tasks)
        if self._subscription is not None and self._subscription._task is not None:
            tasks.add(self._subscription._task)
        return tasks

    def spawn(self, coro: Any, *, name: str) -> asyncio.Task[Any]:
        """Run ``coro`` in a task owned by the worker: cancelled and awaited when it stops."""
        return self._tasks.spawn(coro, name=name)

    # -- sending ------------------------------------------------------------------------------

    async def send_bus_message(self, message: BusMessage) -> None:
        """Send ``message`` on the bus (see :meth:`WorkerBus.send`)."""
        await self.bus.send(message)

    async def activate_worker(self, name: str, args: dict[str, Any] | None = None) -> None:
        """Ask worker ``name`` (local or remote) to become active, with ``args``."""
        await self.send_bus_message(
            BusActivateWorkerMessage(source=self._name, target=name, args=args)
        )

    async def deactivate_worker(self, name: str) -> None:
        """Ask worker ``name`` (local or remote) to become inactive."""
        await self.send_bus_message(BusDeactivateWorkerMessage(source=self._name, target=name))

    async def end_worker(self, name: str, reason: str | None = None) -> None:
        """Ask worker ``name`` to end after its queued messages."""
        await self.send_bus_message(
            BusEndWorkerMessage(source=self._name, target=name, reason=reason)
        )

    async def cancel_worker(self, name: str, reason: str | None = None) -> None:
        """Ask worker ``name`` to stop at once."""
        await self.send_bus_message(
            BusCancelWorkerMessage(source=self._name, target=name, reason=reason)
        )

    # -- watching -----------------------------------------------------------------------------

    def watch_workers(self, *names: str) -> None:
        """Fire ``on_worker_ready`` when each of ``names`` is ready (local or remote).

        Fires at once for a worker that is ready now, and again if it comes back after going
        away (a link that reconnects). Watching ends when this worker stops.
        """
        registry = self.runner.registry
        for name in names:
            self._watches.append(registry.watch(name, self._worker_became_ready))

    def _worker_became_ready(self, entry: WorkerRegistryEntry) -> None:
        if self._state in (WorkerState.ENDING, WorkerState.FINISHED):
            return
        self._tasks.spawn(self._fire_worker_ready(entry), name=f"ready:{entry.name}")

    async def _fire_worker_ready(self, entry: WorkerRegistryEntry) -> None:
        await self.on_worker_ready(entry)
        await self._call_event_handler("on_worker_ready", entry)

    async def on_worker_ready(self, entry: WorkerRegistryEntry) -> None:
        """Hook: a watched worker is ready."""

    # -- receiving ----------------------------------------------------------------------------

    def _direct_handler(self) -> DirectHandler | None:
        """The bus's fast path for this worker (see :class:`~fastapi_busproxy.bus.WorkerBus`).

        Workers run their handlers in their own task, so none by default; proxies write to an
        idle link from the sender's task.
        """
        return None

    async def _receive(self, message: BusMessage) -> None:
        if self._state is WorkerState.ENDING:
            return  # stopping: what is still queued is discarded
        if not self._active and not message.system and not isinstance(message, _WHILE_INACTIVE):
            if isinstance(message, BusJobRequestMessage):
                await self._refuse_job(message, f"worker {self._name!r} is not active")
            return
        await self.on_bus_message(message)

    async def on_bus_message(self, message: BusMessage) -> None:
        """Handle a message from the bus.

        Subclasses handle their own types and call ``super().on_bus_message(message)`` for the
        others: the base class handles activation, end and cancel requests, and jobs.
        Messages are delivered one at a time; a long operation here delays the next message,
        so start it with :meth:`spawn` instead.
        """
        handler = _DISPATCH.get(type(message))
        if handler is None:
            for cls, candidate in _DISPATCH.items():
                if isinstance(message, cls):
                    handler = candidate
                    break
            else:
                return
        await handler(self, message)

    async def _on_activate(self, message: BusMessage) -> None:
        assert isinstance(message, BusActivateWorkerMessage)
        if message.target != self._name:
            return
        self._active = True
        if self._runner is not None:
            self._runner.registry.update(self._name, active=True)
        await self.on_activated(message.args)
        await self._call_event_handler("on_activated", message.args)

    async def _on_deactivate(self, message: BusMessage) -> None:
        if message.target != self._name:
            return
        self._active = False
        if self._runner is not None:
            self._runner.registry.update(self._name, active=False)
        await self.on_deactivated()
        await self._call_event_handler("on_deactivated")

    async def on_activated(self, args: dict[str, Any] | None) -> None:
        """Hook: the worker was activated, with the sender's ``args``."""

    async def on_deactivated(self) -> None:
        """Hook: the worker was deactivated."""

    async def _on_end(self, message: BusMessage) -> None:
        # A broadcast end is the runner's business; a worker obeys one addressed to it.
        if message.target == self._name:
            await self._finish(getattr(message, "reason", None), cancelled=False)

    async def _on_cancel(self, message: BusMessage) -> None:
        if message.target == self._name:
            await self._finish(getattr(message, "reason", None), cancelled=True)

    # -- jobs: requester side -----------------------------------------------------------------

    async def start_job(
        self,
        worker_name: str,
        *,
        name: str | None = None,
        payload: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Job:
        """Send a job request to ``worker_name`` and return its :class:`Job`.

        Waits until ``worker_name`` is ready (local, or remote through a proxy). ``timeout``
        bounds the whole job: readiness and answer. When it passes, the job is cancelled on
        the serving side and ends here with :class:`JobTimeoutError`.

        Raises:
            JobTimeoutError: ``worker_name`` was not ready within ``timeout``.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await self.runner.registry.wait_ready(worker_name, timeout)
        except TimeoutError:
            raise JobTimeoutError(
                f"worker {worker_name!r} was not ready within {timeout}s"
                " (is it running, and is the proxy to it connected?)",
                job_id="",
            ) from None
        job = Job(self, str(uuid.uuid4()), worker_name, name, max_events=self.job_event_buffer)
        self._requested[job.job_id] = job
        if timeout is not None:
            remaining = max(0.0, timeout - (loop.time() - started))
            job._deadline = loop.call_later(remaining, self._job_deadline, job, timeout)
        try:
            await self.send_bus_message(
                BusJobRequestMessage(
                    source=self._name,
                    target=worker_name,
                    job_id=job.job_id,
                    job_name=name,
                    payload=payload,
                )
            )
        except BaseException:
            self._forget_job(job)
            raise
        return job

    async def request_job(
        self,
        worker_name: str,
        *,
        name: str | None = None,
        payload: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> str:
        """Like :meth:`start_job`, returning only the job id.

        The answer arrives in :meth:`on_job_response` (and :meth:`get_job` gives the
        :class:`Job` until then).
        """
        job = await self.start_job(worker_name, name=name, payload=payload, timeout=timeout)
        return job.job_id

    @asynccontextmanager
    async def job(
        self,
        worker_name: str,
        *,
        name: str | None = None,
        payload: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[Job]:
        """Run a job for the duration of an ``async with`` block::

            async with worker.job("assistant", name="ask", payload={"q": "..."}) as job:
                async for event in job:
                    print(event)
            print(job.response)

        On leaving the block normally, waits for the final response and raises
        :class:`JobFailedError`, :class:`JobCancelledError` or :class:`JobTimeoutError` if the
        job did not complete. Leaving it with an exception (or a cancellation) cancels the job
        on the serving side.
        """
        job = await self.start_job(worker_name, name=name, payload=payload, timeout=timeout)
        try:
            yield job
        except BaseException:
            if not job.done:
                with suppress(BusError, asyncio.CancelledError):
                    await asyncio.shield(self.cancel_job(job.job_id, "requester left the job"))
            raise
        else:
            await job.wait()
        finally:
            self._forget_job(job)

    def get_job(self, job_id: str) -> Job | None:
        """The :class:`Job` this worker requested with ``job_id``, until it ends."""
        return self._requested.get(job_id)

    async def cancel_job(self, job_id: str, reason: str | None = None) -> None:
        """Cancel a job this worker requested; it ends here as cancelled at once."""
        job = self._requested.get(job_id)
        if job is None:
            return
        self._forget_job(job)
        job._finish(JobStatus.CANCELLED, None, reason or "cancelled by the requester")
        await self.send_bus_message(
            BusJobCancelMessage(source=self._name, target=job.target, job_id=job_id, reason=reason)
        )

    async def request_job_update(self, job_id: str) -> None:
        """Ask the serving worker of a job for an update."""
        job = self._requested.get(job_id)
        if job is None:
            raise ConfigurationError(f"worker {self._name!r} has no running job {job_id!r}")
        await self.send_bus_message(
            BusJobUpdateRequestMessage(source=self._name, target=job.target, job_id=job_id)
        )

    def _job_deadline(self, job: Job, timeout: float) -> None:
        if job.done:
            return
        self._forget_job(job)
        job._time_out(timeout)
        if self._state is WorkerState.RUNNING:
            self._tasks.spawn(
                self._send_quietly(
                    BusJobCancelMessage(
                        source=self._name, target=job.target, job_id=job.job_id, reason="timeout"
                    )
                ),
                name=f"job-timeout:{job.job_id}",
            )

    async def _send_quietly(self, message: BusMessage) -> None:
        try:
            await self.send_bus_message(message)
        except BusError as exc:
            logger.debug("worker %s could not send %s: %s", self._name, type(message).__name__, exc)

    def _forget_job(self, job: Job) -> None:
        self._requested.pop(job.job_id, None)
        if job._deadline is not None:
            job._deadline.cancel()
            job._deadline = None

    async def _on_job_reply(self, message: BusMessage) -> None:
        assert isinstance(message, (BusJobResponseMessage, BusJobResponseUrgentMessage))
        job = self._requested.get(message.job_id)
        if job is None or message.source != job.target:
            logger.debug(
                "worker %s: no job %s from %s awaits an answer",
                self._name,
                message.job_id,
                message.source,
            )
            return
        self._forget_job(job)
        job._finish(JobStatus(message.status), message.response)
        await self.on_job_response(message)

    async def _on_job_event(self, message: BusMessage) -> None:
        assert isinstance(message, _JOB_EVENTS)
        job = self._requested.get(message.job_id)
        if job is None or message.source != job.target:
            return
        job._push(message)
        await self.on_job_event(message)

    async def on_job_response(
        self, message: BusJobResponseMessage | BusJobResponseUrgentMessage
    ) -> None:
        """Hook: the final answer of a job this worker requested (the :class:`Job` is done)."""

    async def on_job_event(self, message: JobEvent) -> None:
        """Hook: an update or stream message of a job this worker requested."""

    # -- jobs: serving side -------------------------------------------------------------------

    async def on_job_request(self, message: BusJobRequestMessage) -> dict[str, Any] | None:
        """Hook: run the job ``message`` asks for. Override to serve jobs.

        Runs in its own task, so the worker keeps receiving messages (updates requests,
        cancellation) meanwhile. Send progress with :meth:`send_job_update` and the stream
        methods. The job ends with the first of:

        - :meth:`send_job_response` called here;
        - returning: the return value (a dict or ``None``) is sent as a ``completed`` response;
        - raising: the requester gets status ``error`` with ``{"error": "<message>"}``;
        - cancellation (by the requester, or the worker stopping): status ``cancelled``.

        The default answers ``error``: this worker does not serve jobs.
        """
        raise NotImplementedError(f"worker {self._name!r} does not serve jobs")

    async def on_job_update_request(self, message: BusJobUpdateRequestMessage) -> None:
        """Hook: the requester of a job asks for an update. The default does nothing."""

    async def _on_job_request(self, message: BusMessage) -> None:
        assert isinstance(message, BusJobRequestMessage)
        if message.target != self._name:
            return
        running = self._served.get(message.job_id)
        if running is not None:
            if running.requester == message.source:
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
        served = _ServedJob(requester=message.source, name=message.job_name)
        self._served[message.job_id] = served
        served.task = self._tasks.spawn(self._serve(message, served), name=f"job:{message.job_id}")

    async def _serve(self, message: BusJobRequestMessage, served: _ServedJob) -> None:
        job_id = message.job_id
        try:
            result: object = await self.on_job_request(message)
        except asyncio.CancelledError:
            if not served.answered:
                await self._answer_quietly(job_id, served, JobStatus.CANCELLED, None)
            raise
        except Exception as exc:
            if not isinstance(exc, NotImplementedError):
                logger.exception("job %s of worker %s failed", job_id, self._name)
            if not served.answered:
                await self._answer_quietly(job_id, served, JobStatus.ERROR, {"error": str(exc)})
        else:
            if not served.answered:
                if result is not None and not isinstance(result, dict):
                    logger.error(
                        "on_job_request() of %s returned %s, not a dict or None",
                        self._name,
                        type(result).__name__,
                    )
                    await self._answer_quietly(
                        job_id, served, JobStatus.ERROR, {"error": "invalid job result"}
                    )
                else:
                    await self._answer_quietly(job_id, served, JobStatus.COMPLETED, result)
        finally:
            self._served.pop(job_id, None)

    async def _answer_quietly(
        self,
        job_id: str,
        served: _ServedJob,
        status: JobStatus,
        response: dict[str, Any] | None,
    ) -> None:
        served.answered = True
        await self._send_quietly(
            BusJobResponseMessage(
                source=self._name,
                target=served.requester,
                job_id=job_id,
                status=status,
                response=response,
            )
        )

    async def _refuse_job(self, message: BusJobRequestMessage, reason: str) -> None:
        logger.info(
            "worker %s refused job %s from %s: %s",
            self._name,
            message.job_id,
            message.source,
            reason,
        )
        await self._send_quietly(
            BusJobResponseMessage(
                source=self._name,
                target=message.source,
                job_id=message.job_id,
                status=JobStatus.ERROR,
                response={"error": reason},
            )
        )

    async def _on_job_cancel(self, message: BusMessage) -> None:
        assert isinstance(message, BusJobCancelMessage)
        served = self._served.get(message.job_id)
        # Only the requester may cancel its job.
        if served is None or served.requester != message.source or served.task is None:
            return
        served.task.cancel()

    async def _on_job_update_request(self, message: BusMessage) -> None:
        assert isinstance(message, BusJobUpdateRequestMessage)
        served = self._served.get(message.job_id)
        if served is not None and served.requester == message.source:
            await self.on_job_update_request(message)

    def _served_job(self, job_id: str) -> _ServedJob:
        served = self._served.get(job_id)
        if served is None:
            raise ConfigurationError(
                f"worker {self._name!r} is not serving a job {job_id!r}"
                " (it ended, or it was never requested)"
            )
        return served

    async def send_job_response(
        self,
        job_id: str,
        response: dict[str, Any] | None = None,
        *,
        status: JobStatus | str = JobStatus.COMPLETED,
        urgent: bool = False,
    ) -> None:
        """Send the final answer of a job this worker serves.

        Raises:
            ConfigurationError: no such job is being served (it has already been answered).
        """
        served = self._served_job(job_id)
        if served.answered:
            raise ConfigurationError(f"job {job_id!r} has already been answered")
        served.answered = True
        cls = BusJobResponseUrgentMessage if urgent else BusJobResponseMessage
        await self.send_bus_message(
            cls(
                source=self._name,
                target=served.requester,
                job_id=job_id,
                status=JobStatus(status),
                response=response,
            )
        )

    async def send_job_update(
        self, job_id: str, update: dict[str, Any] | None = None, *, urgent: bool = False
    ) -> None:
        """Send progress of a job this worker serves (urgent: ahead of queued data)."""
        served = self._served_job(job_id)
        cls = BusJobUpdateUrgentMessage if urgent else BusJobUpdateMessage
        await self.send_bus_message(
            cls(source=self._name, target=served.requester, job_id=job_id, update=update)
        )

    async def send_job_stream_start(self, job_id: str, data: dict[str, Any] | None = None) -> None:
        """Open the stream of a job this worker serves."""
        served = self._served_job(job_id)
        await self.send_bus_message(
            BusJobStreamStartMessage(
                source=self._name, target=served.requester, job_id=job_id, data=data
            )
        )

    async def send_job_stream_data(self, job_id: str, data: dict[str, Any] | None = None) -> None:
        """Send one chunk of the stream of a job this worker serves."""
        served = self._served_job(job_id)
        await self.send_bus_message(
            BusJobStreamDataMessage(
                source=self._name, target=served.requester, job_id=job_id, data=data
            )
        )

    async def send_job_stream_end(self, job_id: str, data: dict[str, Any] | None = None) -> None:
        """Close the stream of a job this worker serves."""
        served = self._served_job(job_id)
        await self.send_bus_message(
            BusJobStreamEndMessage(
                source=self._name, target=served.requester, job_id=job_id, data=data
            )
        )


_DISPATCH: dict[type[BusMessage], Any] = {
    BusActivateWorkerMessage: BaseWorker._on_activate,
    BusDeactivateWorkerMessage: BaseWorker._on_deactivate,
    BusEndMessage: BaseWorker._on_end,
    BusEndWorkerMessage: BaseWorker._on_end,
    BusCancelMessage: BaseWorker._on_cancel,
    BusCancelWorkerMessage: BaseWorker._on_cancel,
    BusJobRequestMessage: BaseWorker._on_job_request,
    BusJobResponseMessage: BaseWorker._on_job_reply,
    BusJobResponseUrgentMessage: BaseWorker._on_job_reply,
    BusJobUpdateMessage: BaseWorker._on_job_event,
    BusJobUpdateUrgentMessage: BaseWorker._on_job_event,
    BusJobStreamStartMessage: BaseWorker._on_job_event,
    BusJobStreamDataMessage: BaseWorker._on_job_event,
    BusJobStreamEndMessage: BaseWorker._on_job_event,
    BusJobCancelMessage: BaseWorker._on_job_cancel,
    BusJobUpdateRequestMessage: BaseWorker._on_job_update_request,
}
