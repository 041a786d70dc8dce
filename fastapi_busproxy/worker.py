"""Workers: named agents on the bus.

A :class:`BaseWorker` is added to a :class:`~fastapi_busproxy.runner.WorkerRunner`, which
attaches it at once (its :attr:`~BaseWorker.bus`, :attr:`~BaseWorker.registry` and
:attr:`~BaseWorker.worker_runner` are set) and starts it when the runner runs. From then on the
bus delivers to it, one at a time, the messages its :meth:`~BaseWorker.bus_interest` selects
(by default: those targeted at its name, and broadcasts). A subclass handles its own message
types by overriding :meth:`~BaseWorker.on_bus_message` and calling
``super().on_bus_message(message)`` for the rest::

    class Greeter(BaseWorker):
        async def on_bus_message(self, message):
            await super().on_bus_message(message)
            if isinstance(message, Hello):
                await self.send_bus_message(Hello(source=self.name, target=message.source))

Lifecycle: ``CREATED`` -> ``STARTING`` -> ``RUNNING`` (ready: registered in the runner's
registry) -> ``ENDING`` -> ``FINISHED``. Override :meth:`~BaseWorker.start` and
:meth:`~BaseWorker.stop` (calling ``super()``) to start and stop resources of your own.
:meth:`~BaseWorker.end` and :meth:`~BaseWorker.cancel` end the worker's *session*: the whole
runner in a script, one connection's workers in an app (see :mod:`fastapi_busproxy.session`).
A finished worker cannot be started again.

Jobs live in :mod:`fastapi_busproxy.jobs`: the worker holds the state of both halves (a
:class:`~fastapi_busproxy.jobs.requesting.JobRequester` and a
:class:`~fastapi_busproxy.jobs.serving.JobServer`) and inherits their methods, hooks and
message handling from :class:`~fastapi_busproxy.jobs.worker_jobs.WorkerJobs`. This module is
the worker's life cycle, activation, readiness and dispatch.

An inactive worker (``active=False``, or after a deactivation) takes only activation,
deactivation and end messages, system messages, and the answers to its own jobs; a job request
sent to it is answered at once with status ``error``.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from . import _tracing_hook
from ._events import EventEmitter
from ._flag import Flag
from ._marked import marked_methods
from ._tasks import TaskSet
from .bus import DirectHandler, Subscription, WorkerBus
from .exceptions import BusError, ConfigurationError, InvalidStateError
from .interest import Interest
from .jobs.group import DEFAULT_JOB_EVENT_BUFFER
from .jobs.params import (
    collect_job_handlers,
)
from .jobs.serving import DEFAULT_JOB_LIMITS, JobLimits
from .jobs.worker_jobs import WorkerJobs
from .messages import (
    BusActivateWorkerMessage,
    BusAddWorkerMessage,
    BusCancelMessage,
    BusCancelWorkerMessage,
    BusDeactivateWorkerMessage,
    BusEndMessage,
    BusEndWorkerMessage,
    BusFrameMessage,
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
    BusWorkerErrorMessage,
    BusWorkerLocalErrorMessage,
    WorkerRegistryEntry,
)
from .registry import WorkerErrorData, WorkerReadyData, WorkerRegistry

if TYPE_CHECKING:
    from .jobs.requesting import JobRequester
    from .jobs.serving import JobServer
    from .runner import WorkerRunner
    from .session import WorkerSession

__all__ = ["BaseWorker", "WorkerActivationArgs", "WorkerState", "worker_ready"]

logger = logging.getLogger(__name__)

EVENT_HANDLER_GRACE = 5.0
"""Seconds a stopping worker lets its running event handlers finish before cancelling them."""


class WorkerState(enum.Enum):
    """Where a worker is in its life."""

    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    ENDING = "ending"
    FINISHED = "finished"


@dataclass
class WorkerActivationArgs:
    """Arguments of an activation (:meth:`BaseWorker.activate_worker`); subclass to add fields.

    They travel as a dict (:meth:`to_dict`, ``None`` fields left out) and reach the activated
    worker's ``on_activated(args)`` as that dict; :meth:`from_dict` turns it back.
    """

    metadata: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls: type[_A], data: dict[str, Any]) -> _A:
        """Build from a dict, ignoring the keys that are not fields."""
        names = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})

    def to_dict(self) -> dict[str, Any]:
        """The fields that are not ``None``."""
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }


_A = TypeVar("_A", bound=WorkerActivationArgs)
_F = TypeVar("_F", bound=Callable[..., Any])


def worker_ready(*, name: str) -> Callable[[_F], _F]:
    """Mark a worker method to be called with the :class:`~fastapi_busproxy.WorkerReadyData`
    of the worker ``name`` when it is ready (watched from the worker's start)::

        @worker_ready(name="greeter")
        async def greeter_ready(self, data):
            await self.activate_worker(data.worker_name)
    """

    def decorate(method: _F) -> _F:
        method.__busproxy_worker_ready__ = name  # type: ignore[attr-defined]
        return method

    return decorate


def _collect_ready_handlers(obj: object) -> dict[str, Callable[..., Any]]:
    marked = marked_methods(type(obj), "__busproxy_worker_ready__", "@worker_ready")
    if not marked:
        return _NONE
    return {str(name): getattr(obj, attr) for name, (attr, _) in marked.items()}


_NONE: dict[str, Any] = {}


# Data messages an inactive worker still takes: what changes its state, and the answers to
# the jobs it asked for.
_WHILE_INACTIVE = (
    BusActivateWorkerMessage,
    BusDeactivateWorkerMessage,
    BusEndWorkerMessage,
    BusJobResponseMessage,
    BusJobUpdateMessage,
    BusJobStreamStartMessage,
    BusJobStreamDataMessage,
    BusJobStreamEndMessage,
)

_names = itertools.count()


class BaseWorker(WorkerJobs, EventEmitter):
    """A named agent on the bus.

    Args:
        name: the worker's name, unique in its runner; messages are targeted at it by name.
            ``None`` makes one up (``"<ClassName>#<n>"``).
        active: whether it starts active; an active worker's ``on_activated(None)`` runs when
            it starts.
        check_dangling_tasks: accepted for compatibility; every task a worker starts is
            cancelled and awaited when it stops, so none is left to report.
        job_limits: how many jobs it serves at once (default: its runner's
            :attr:`~fastapi_busproxy.WorkerRunner.job_limits`); further requests wait.

    Events (``@worker.event_handler("on_...")``; handlers get the worker first and run in
    tasks of their own): ``on_activated(args)``, ``on_deactivated()``, ``on_bus_message(m)``,
    ``on_job_request(m)``, ``on_job_response(m)``, ``on_job_update(m)``,
    ``on_job_update_requested(m)``, ``on_job_completed(result)``, ``on_job_error(m)``,
    ``on_job_stream_start(m)``, ``on_job_stream_data(m)``, ``on_job_stream_end(m)``,
    ``on_job_cancelled(m)``, ``on_worker_ready(data)``, ``on_worker_failed(data)``; and, awaited
    in place, ``on_started()`` (the worker is ready) and ``on_finished()`` (it has stopped).

    Each event has a hook of the same name to override (``async def on_job_request(self,
    message)``...), called before the event's handlers.
    """

    EVENTS: ClassVar[tuple[str, ...]] = (
        "on_started",
        "on_finished",
        "on_activated",
        "on_deactivated",
        "on_bus_message",
        "on_job_request",
        "on_job_response",
        "on_job_update",
        "on_job_update_requested",
        "on_job_completed",
        "on_job_error",
        "on_job_stream_start",
        "on_job_stream_data",
        "on_job_stream_end",
        "on_job_cancelled",
        "on_worker_ready",
        "on_worker_failed",
    )
    INLINE_EVENTS: ClassVar[tuple[str, ...]] = ("on_started", "on_finished")

    job_event_buffer: ClassVar[int] = DEFAULT_JOB_EVENT_BUFFER
    """Events each job this worker requests keeps for its ``async for`` reader."""

    _own_session: ClassVar[bool] = False
    """Whether :meth:`WorkerRunner.add_workers` gives the worker a session of its own."""

    def __init__(
        self,
        name: str | None = None,
        *,
        active: bool = True,
        check_dangling_tasks: bool = True,
        job_limits: JobLimits | None = None,
    ) -> None:
        super().__init__()
        if name is None:
            name = f"{type(self).__name__}#{next(_names)}"
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"a worker needs a non-empty str name, not {name!r}")
        self._name = name
        self._active = active
        self._pending_activation = active
        self._activation_args: dict[str, Any] | None = None
        self._state = WorkerState.CREATED
        self._runner: WorkerRunner | None = None
        self._session: WorkerSession | None = None
        self._subscription: Subscription | None = None
        self._tasks = TaskSet(name)
        self._finished = Flag()
        self._finishing: asyncio.Task[None] | None = None
        self._stop_called = False
        self._started_at: float | None = None
        self._parent: str | None = None
        self._children: list[BaseWorker] = []
        self._watching: list[str] = []
        self._ready_handlers = _collect_ready_handlers(self)
        self._job_handlers = collect_job_handlers(self)
        self._job_limits = job_limits
        # Made on first use: a server holds a worker (its proxy) per connection.
        self._job_requester: JobRequester | None = None
        self._job_server: JobServer | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._name!r} {self._state.value}>"

    # -- properties ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def active(self) -> bool:
        """Whether the worker takes all the messages addressed to it (see the module doc)."""
        return self._active

    @property
    def activation_args(self) -> dict[str, Any] | None:
        """The arguments of the latest activation; ``None`` while inactive."""
        return self._activation_args

    @property
    def state(self) -> WorkerState:
        return self._state

    @property
    def finished(self) -> bool:
        return self._state is WorkerState.FINISHED

    @property
    def started_at(self) -> float | None:
        """Wall-clock time (``time.time()``) at which the worker became ready."""
        return self._started_at

    @property
    def bridged(self) -> bool:
        """Whether the worker bridges a pipeline onto the bus (never, for these workers)."""
        return False

    @property
    def parent(self) -> str | None:
        """The name of the worker that added this one with :meth:`add_workers`, if any."""
        return self._parent

    @property
    def children(self) -> list[BaseWorker]:
        """The workers this one added with :meth:`add_workers`."""
        return self._children

    def _attached(self) -> WorkerRunner:
        if self._runner is None:
            raise InvalidStateError(
                f"worker {self._name!r} is not attached: add it with runner.add_workers() first"
            )
        return self._runner

    @property
    def worker_runner(self) -> WorkerRunner:
        """The runner the worker was added to.

        Raises:
            InvalidStateError: the worker has not been added to a runner.
        """
        return self._attached()

    @property
    def runner(self) -> WorkerRunner:
        """The same as :attr:`worker_runner`."""
        return self._attached()

    @property
    def bus(self) -> WorkerBus:
        """The runner's bus. Raises :class:`InvalidStateError` before the worker is added."""
        return self._attached().bus

    @property
    def job_limits(self) -> JobLimits:
        """How many jobs the worker serves at once (its own, else its runner's)."""
        if self._job_limits is not None:
            return self._job_limits
        return self._runner.job_limits if self._runner is not None else DEFAULT_JOB_LIMITS

    @property
    def registry(self) -> WorkerRegistry:
        """The runner's registry. Raises :class:`InvalidStateError` before it is added."""
        return self._attached().registry

    @property
    def session(self) -> WorkerSession:
        """The session the worker belongs to (what :meth:`end` and :meth:`cancel` end)."""
        self._attached()
        assert self._session is not None
        return self._session

    @property
    def subscription(self) -> Subscription | None:
        """The worker's place on the bus (queue length and counters), while it runs."""
        return self._subscription

    def registry_entry(self) -> WorkerRegistryEntry:
        """What the registry (and remote peers) know of this worker."""
        return WorkerRegistryEntry(
            name=self._name,
            parent=self._parent,
            active=self._active,
            bridged=self.bridged,
            started_at=self._started_at,
        )

    def bus_interest(self) -> Interest:
        """What the bus delivers to this worker; override to widen it.

        Default: messages targeted at the worker's name, and broadcasts.
        """
        return Interest.worker(self._name)

    # -- lifecycle ----------------------------------------------------------------------------

    async def attach(
        self,
        *,
        registry: WorkerRegistry,
        bus: WorkerBus,
        worker_runner: WorkerRunner,
        session: WorkerSession | None = None,
    ) -> None:
        """Give the worker its runner (called by :meth:`WorkerRunner.add_workers`).

        ``registry`` and ``bus`` must be the runner's own; ``session`` defaults to the runner's.
        """
        if registry is not worker_runner.registry or bus is not worker_runner.bus:
            raise ConfigurationError("attach() takes the registry and bus of the runner given")
        if self._runner is not None and self._runner is not worker_runner:
            raise ConfigurationError(f"worker {self._name!r} already belongs to another runner")
        self._runner = worker_runner
        self._session = session or worker_runner.session

    async def _start(self) -> None:
        """Subscribe to the bus and run :meth:`start` (called by the runner)."""
        runner = self._attached()
        if self._state is not WorkerState.CREATED:
            raise InvalidStateError(
                f"worker {self._name!r} was already started ({self._state.value});"
                " a worker runs once: create a new one"
            )
        self._state = WorkerState.STARTING
        self._subscription = await runner.bus.subscribe(
            self._name,
            self._receive,
            self.bus_interest(),
            direct=self._direct_handler(),
            admit=self._admission(),
        )
        try:
            await self.start()
        except BaseException:
            await self._finish("start() failed", cancelled=True)
            raise

    async def start(self) -> None:
        """Become ready: registered (and announced to peers), activated if it was created
        active (``on_activated(None)``), watching its ``@worker_ready`` workers.

        Override to start resources of your own, calling ``super().start()``; the worker
        receives messages from the moment it is ready.
        """
        if self._state is not WorkerState.STARTING:
            return
        runner = self._attached()
        self._state = WorkerState.RUNNING
        self._started_at = time.time()
        if self._pending_activation:
            self._active = True
        runner.registry.register_local(self.registry_entry())
        if self._pending_activation:
            self._pending_activation = False
            await self._activated(self._activation_args)
        if self._ready_handlers:
            await self.watch_workers(*self._ready_handlers)
        await self._call_event_handler("on_started")

    async def stop(self) -> None:
        """Stop the worker's jobs: the groups it requested are cancelled, the jobs it serves
        are answered ``cancelled`` and their handlers cancelled.

        Runs once as the worker stops; override to stop resources of your own, calling
        ``super().stop()``. Called on a running worker from outside, it stops the worker.
        """
        if self._finishing is None:
            # Called from outside: stop the worker, which runs the rest of this method once;
            # the caller's own override goes on after it.
            self._stop_called = True
            await self._finish("stop() was called", cancelled=True)
            return
        await self._stop_jobs()

    async def _stop_jobs(self) -> None:
        if self._job_requester is not None:
            if self._runner is not None:
                self._runner.registry.remove_unreachable_handler(self._target_unreachable)
            await self._job_requester.stop(f"worker {self._name!r} stopped")
        if self._job_server is not None:
            await self._job_server.stop()

    async def end(self, *, reason: str | None = None) -> None:
        """End the worker's session gracefully: every worker of it finishes the messages
        already queued, then stops. In a script that is the whole runner (a
        :class:`BusEndMessage` on the bus, as the reference sends); in an app, the workers of
        one connection (see :mod:`fastapi_busproxy.session`). Returns at once.
        """
        session = self.session
        if session.root:
            await self.send_bus_message(BusEndMessage(source=self._name, reason=reason))
        else:
            await session.end(reason)

    async def cancel(self, *, reason: str | None = None) -> None:
        """Cancel the worker's session: every worker of it stops at once (see :meth:`end`)."""
        session = self.session
        if session.root:
            await self.send_bus_message(BusCancelMessage(source=self._name, reason=reason))
        else:
            await session.cancel(reason)

    async def _make_way_for(self, newcomer: BaseWorker) -> bool:
        """The runner's hook when ``newcomer`` is added under this worker's name: ``True``
        when this worker took it over (it is not added); this worker may also finish to free
        the name. By default neither: the runner refuses the newcomer."""
        return False

    async def wait(self) -> None:
        """Wait until the worker has finished."""
        await self._finished.wait()

    async def _request_end(self, reason: str | None) -> None:
        """Finish after the messages already queued (the runner's and the session's end)."""
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

    async def _cancel_now(self, reason: str | None) -> None:
        """Stop at once; returns when stopped (at once when called from the worker itself)."""
        await self._finish(reason, cancelled=True)

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
        await self._stop_children(reason, cancelled=cancelled)
        runner = self._runner
        if runner is not None:
            for name in self._watching:
                runner.registry.unwatch(name, self._on_watched_worker_ready)
        self._watching.clear()
        try:
            # stop() runs once: not again when a call of stop() itself began the stopping.
            await (self._stop_jobs() if self._stop_called else self.stop())
        except Exception:
            logger.exception("stop() of worker %s raised", self._name)
        await self._tasks.cancel_all()
        await self._settle_event_handlers(EVENT_HANDLER_GRACE)
        if self._subscription is not None and runner is not None:
            await runner.bus.unsubscribe(self._subscription)
        self._state = WorkerState.FINISHED
        try:
            # The runner's handler takes the worker out: wait() returns after that, so the
            # name is free for a new worker at once.
            await self._call_event_handler("on_finished")
        finally:
            self._finished.set()

    async def _stop_children(self, reason: str | None, *, cancelled: bool) -> None:
        children = [child for child in self._children if not child.finished]
        if not children or self._runner is None:
            return
        kind = BusCancelWorkerMessage if cancelled else BusEndWorkerMessage
        for child in children:
            try:
                await self.bus.send(kind(source=self._name, target=child.name, reason=reason))
            except BusError:
                await child._cancel_now(reason)
        await asyncio.gather(*(child.wait() for child in children))

    def _owned_tasks(self) -> set[asyncio.Task[Any]]:
        tasks = set(self._tasks._tasks) | self._event_handler_tasks()
        if self._subscription is not None and self._subscription._task is not None:
            tasks.add(self._subscription._task)
        return tasks

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        return self._tasks.spawn(coro, name=name)

    def create_task(
        self, coroutine: Coroutine[Any, Any, Any], name: str | None = None
    ) -> asyncio.Task[Any]:
        """Run ``coroutine`` in a task the worker owns: cancelled and awaited when it stops."""
        if name is None:
            code = getattr(coroutine, "cr_code", None)
            name = getattr(code, "co_name", "task")
        return self._tasks.spawn(coroutine, name=name)

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        """The same as :meth:`create_task`."""
        return self._tasks.spawn(coro, name=name)

    async def cancel_task(self, task: asyncio.Task[Any], timeout: float | None = 1.0) -> None:
        """Cancel ``task`` and wait up to ``timeout`` seconds for it to finish."""
        if task is asyncio.current_task() or task.done():
            return
        task.cancel()
        await asyncio.wait((task,), timeout=timeout)

    # -- other workers ------------------------------------------------------------------------

    async def send_bus_message(self, message: BusMessage) -> None:
        """Send ``message`` on the bus (see :meth:`WorkerBus.send`)."""
        tracer = _tracing_hook.active
        if tracer is not None:
            tracer.sent(message, self._name)
        await self.bus.send(message)

    async def send_bus_error_message(self, error: str) -> None:
        """Report an error: to the parent (a child's ``on_worker_failed``), else broadcast."""
        if self._parent is not None:
            await self.send_bus_message(BusWorkerLocalErrorMessage(source=self._name, error=error))
        else:
            await self.send_bus_message(BusWorkerErrorMessage(source=self._name, error=error))

    async def add_workers(self, *workers: BaseWorker, watch: bool = True) -> None:
        """Add child workers to this worker's runner and session.

        A child ends and is cancelled with its parent; its errors reach
        :meth:`on_worker_failed`. With ``watch``, ``on_worker_ready`` fires as each one starts.
        A worker that already has a parent is skipped (with a warning).
        """
        added: list[str] = []
        for worker in workers:
            if worker._parent is not None:
                logger.warning(
                    "worker %s already has parent %s; not added to %s",
                    worker.name,
                    worker._parent,
                    self._name,
                )
                continue
            worker._parent = self._name
            self._children.append(worker)
            added.append(worker.name)
            await self.send_bus_message(BusAddWorkerMessage(source=self._name, worker=worker))
        if watch and added:
            await self.watch_workers(*added)

    async def activate_worker(
        self,
        worker_name: str,
        *,
        args: WorkerActivationArgs | dict[str, Any] | None = None,
        deactivate_self: bool = False,
    ) -> None:
        """Ask worker ``worker_name`` (local or remote) to become active, with ``args``.

        With ``deactivate_self``, this worker becomes inactive first, so the two are never
        active at once.
        """
        if deactivate_self and self._active:
            self._active = False
            await self.deactivate_worker(self._name)
        data = args.to_dict() if isinstance(args, WorkerActivationArgs) else args
        await self.send_bus_message(
            BusActivateWorkerMessage(source=self._name, target=worker_name, args=data)
        )

    async def deactivate_worker(self, worker_name: str) -> None:
        """Ask worker ``worker_name`` (local or remote) to become inactive."""
        await self.send_bus_message(
            BusDeactivateWorkerMessage(source=self._name, target=worker_name)
        )

    async def end_worker(self, worker_name: str, reason: str | None = None) -> None:
        """Ask worker ``worker_name`` (this one too) to end after its queued messages."""
        await self.send_bus_message(
            BusEndWorkerMessage(source=self._name, target=worker_name, reason=reason)
        )

    async def cancel_worker(self, worker_name: str, reason: str | None = None) -> None:
        """Ask worker ``worker_name`` (this one too) to stop at once."""
        await self.send_bus_message(
            BusCancelWorkerMessage(source=self._name, target=worker_name, reason=reason)
        )

    async def watch_workers(self, *worker_names: str) -> None:
        """Fire ``on_worker_ready`` when each of ``worker_names`` is ready (local or remote).

        Fires at once for a worker that is ready now, and again if it comes back after going
        away (a link that reconnects). Watching ends when this worker stops.
        """
        registry = self.registry
        for name in worker_names:
            if name not in self._watching:
                self._watching.append(name)
            await registry.watch(name, self._on_watched_worker_ready)

    async def _on_watched_worker_ready(self, data: WorkerReadyData) -> None:
        if self._state in (WorkerState.ENDING, WorkerState.FINISHED):
            return
        self._tasks.spawn(self._worker_became_ready(data), name=f"ready:{data.worker_name}")

    async def _worker_became_ready(self, data: WorkerReadyData) -> None:
        handler = self._ready_handlers.get(data.worker_name)
        if handler is not None:
            await handler(data)
        await self.on_worker_ready(data)
        await self._call_event_handler("on_worker_ready", data)

    # -- hooks --------------------------------------------------------------------------------

    async def on_activated(self, args: dict[str, Any] | None) -> None:
        """Hook: the worker became active, with the activation's ``args``."""

    async def on_deactivated(self) -> None:
        """Hook: the worker became inactive."""

    async def on_worker_ready(self, data: WorkerReadyData) -> None:
        """Hook: a watched worker is ready (see :meth:`watch_workers`)."""

    async def on_worker_failed(self, data: WorkerErrorData) -> None:
        """Hook: a child worker reported an error."""

    # -- receiving ----------------------------------------------------------------------------

    def _direct_handler(self) -> DirectHandler | None:
        """The bus's fast path for this worker (see :class:`~fastapi_busproxy.bus.WorkerBus`).

        Workers run their handlers in their own task, so none by default; proxies write to an
        idle link from the sender's task.
        """
        return None

    def _admission(self) -> Callable[[BusMessage], bool] | None:
        """The bus's admission check for this worker (job limits); proxies serve no jobs."""
        return self._admit

    def _readmit(self) -> None:
        subscription = self._subscription
        if subscription is not None:
            subscription.mailbox.readmit()

    def accepts_bus_message(self, message: BusMessage) -> bool:
        """Whether to handle ``message``; checked before each delivery. Override to filter.

        The default takes everything while active; while inactive, only what the module
        documentation lists.
        """
        return self._active or message.system or isinstance(message, _WHILE_INACTIVE)

    async def _receive(self, message: BusMessage) -> None:
        if self._state is WorkerState.ENDING:
            if message.receipt is not None:
                message.receipt.void()  # not handled: durable delivery keeps it for the next
            return  # stopping: what is still queued is discarded
        if not self.accepts_bus_message(message):
            if isinstance(message, BusJobRequestMessage) and message.target == self._name:
                await self._refuse_job(message, f"worker {self._name!r} is not active")
            return
        tracer = _tracing_hook.active
        if tracer is not None:
            with tracer.processing(message, self._name):
                await self.on_bus_message(message)
            return
        await self.on_bus_message(message)

    async def on_bus_message(self, message: BusMessage) -> None:
        """Handle a message from the bus.

        Subclasses handle their own types and call ``super().on_bus_message(message)``: the
        base class handles activation, ending, errors and jobs, then fires the
        ``on_bus_message`` event. Messages are delivered one at a time; a long operation here
        delays the next message, so start it with :meth:`create_task` instead.
        """
        if isinstance(message, BusFrameMessage):
            return
        if message.target is not None and message.target != self._name:
            return
        handler = _DISPATCH.get(type(message))
        if handler is None:
            for cls, candidate in _DISPATCH.items():
                if isinstance(message, cls):
                    handler = candidate
                    break
        if handler is not None:
            await handler(self, message)
        await self._call_event_handler("on_bus_message", message)

    async def _on_activate(self, message: BusMessage) -> None:
        assert isinstance(message, BusActivateWorkerMessage)
        self._activation_args = message.args
        self._active = True
        await self._activated(message.args)

    async def _activated(self, args: dict[str, Any] | None) -> None:
        self._activation_args = args
        if self._runner is not None:
            self._runner.registry.update(self._name, active=True)
        await self.on_activated(args)
        await self._call_event_handler("on_activated", args)

    async def _on_deactivate(self, message: BusMessage) -> None:
        self._active = False
        self._activation_args = None
        if self._runner is not None:
            self._runner.registry.update(self._name, active=False)
        await self.on_deactivated()
        await self._call_event_handler("on_deactivated")

    async def _on_end(self, message: BusMessage) -> None:
        assert isinstance(message, BusEndWorkerMessage)
        subscription = self._subscription
        if subscription is None or not subscription.mailbox:
            await self._finish(message.reason, cancelled=False)
            return
        # Senders take turns, so messages queued before this one may still be waiting: end
        # once as many messages as are queued now have been handled.
        reason = message.reason

        async def finish() -> None:
            await self._finish(reason, cancelled=False)

        subscription.when_drained(finish)

    async def _on_cancel(self, message: BusMessage) -> None:
        assert isinstance(message, BusCancelWorkerMessage)
        await self._finish(message.reason, cancelled=True)

    async def _on_worker_error(self, message: BusMessage) -> None:
        assert isinstance(message, (BusWorkerErrorMessage, BusWorkerLocalErrorMessage))
        if any(child.name == message.source for child in self._children):
            data = WorkerErrorData(worker_name=message.source, error=message.error)
            await self.on_worker_failed(data)
            await self._call_event_handler("on_worker_failed", data)

_DISPATCH: dict[type[BusMessage], Any] = {
    BusActivateWorkerMessage: BaseWorker._on_activate,
    BusDeactivateWorkerMessage: BaseWorker._on_deactivate,
    BusEndWorkerMessage: BaseWorker._on_end,
    BusCancelWorkerMessage: BaseWorker._on_cancel,
    BusWorkerErrorMessage: BaseWorker._on_worker_error,
    BusWorkerLocalErrorMessage: BaseWorker._on_worker_error,
    BusJobRequestMessage: BaseWorker._on_job_request,
    BusJobResponseMessage: BaseWorker._on_job_response,
    BusJobResponseUrgentMessage: BaseWorker._on_job_response,
    BusJobUpdateMessage: BaseWorker._on_job_event,
    BusJobUpdateUrgentMessage: BaseWorker._on_job_event,
    BusJobStreamStartMessage: BaseWorker._on_job_event,
    BusJobStreamDataMessage: BaseWorker._on_job_event,
    BusJobStreamEndMessage: BaseWorker._on_job_event,
    BusJobCancelMessage: BaseWorker._on_job_cancel,
    BusJobUpdateRequestMessage: BaseWorker._on_job_update_request,
}
