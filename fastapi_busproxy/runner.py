"""The runner: owns the bus, the workers and the registry of ready workers.

::

    runner = WorkerRunner()
    await runner.add_workers(Assistant("assistant"), Client("client"))
    await runner.run()            # until every worker has finished (auto_end=True)

In an application that runs for as long as it likes (a FastAPI app), use the runner as an
async context manager instead: ``async with runner:`` starts the bus, and leaving the block
ends the workers and stops the bus.

A :class:`~fastapi_busproxy.messages.BusEndMessage` or
:class:`~fastapi_busproxy.messages.BusCancelMessage` sent in this process (what
``worker.end()`` and ``worker.cancel()`` send) ends the session of the worker that sent it (see
:mod:`fastapi_busproxy.session`): the runner itself for the workers of its root session. One
that arrived from a remote peer never reaches the runner: the proxy it came through ends its
own session instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import gc
import logging
import signal
import threading
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Any, ClassVar

from ._events import EventEmitter
from .bus import InMemoryBus, Subscription, WorkerBus
from .exceptions import BusError, ConfigurationError, DuplicateWorkerError, InvalidStateError
from .interest import Interest
from .jobs.serving import JobLimits
from .messages import (
    BusAddWorkerMessage,
    BusCancelMessage,
    BusEndMessage,
    BusMessage,
    BusWorkerReadyMessage,
    BusWorkerRegistryMessage,
    WorkerRegistryEntry,
)
from .registry import WorkerRegistry
from .session import WorkerSession
from .worker import BaseWorker

__all__ = ["RunnerState", "WorkerRunner"]

logger = logging.getLogger(__name__)


class RunnerState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    ENDING = "ending"
    FINISHED = "finished"


class WorkerRunner(EventEmitter):
    """Owns a bus and runs workers on it.

    Args:
        name: the runner's name (sent to peers in registry messages); default
            ``"runner-<8 hex digits>"``.
        bus: the bus; default a new :class:`~fastapi_busproxy.bus.InMemoryBus`.
        handle_sigint / handle_sigterm: in :meth:`run` on the main thread, end gracefully on
            the first signal and cancel on the second.
        force_gc: collect garbage once the runner has finished.
        check_dangling_tasks: accepted for compatibility; every task of a worker is cancelled
            and awaited when it stops, so none is left to report.
        job_limits: how many jobs each worker serves at once, unless it has limits of its own
            (:class:`~fastapi_busproxy.JobLimits`).

    Events (``@runner.event_handler(...)``, awaited in place): ``on_ready(runner)`` once the
    runner has started its workers; ``on_error(runner, error)`` when a worker fails to start.

    A runner runs once: after it has finished it cannot be started again.
    """

    EVENTS: ClassVar[tuple[str, ...]] = ("on_ready", "on_error")
    INLINE_EVENTS: ClassVar[tuple[str, ...]] = ("on_ready", "on_error")

    def __init__(
        self,
        *,
        name: str | None = None,
        bus: WorkerBus | None = None,
        handle_sigint: bool = True,
        handle_sigterm: bool = False,
        force_gc: bool = False,
        check_dangling_tasks: bool = True,
        job_limits: JobLimits | None = None,
    ) -> None:
        super().__init__()
        self.job_limits = job_limits or JobLimits()
        self._name = name or f"runner-{uuid.uuid4().hex[:8]}"
        self._bus = bus if bus is not None else InMemoryBus()
        self._handle_sigint = handle_sigint
        self._handle_sigterm = handle_sigterm
        self._force_gc = force_gc
        self._registry = WorkerRegistry(self._name)
        self._root = WorkerSession(self, self._name, root=True)
        self._sessions: dict[str, WorkerSession] = {}
        self._workers: dict[str, BaseWorker] = {}
        self._pending: dict[str, BaseWorker] = {}
        self._state = RunnerState.CREATED
        self._subscription: Subscription | None = None
        self._auto_end = False
        self._done = asyncio.Event()  # run() returns once set
        self._stopped = asyncio.Event()  # the runner has finished
        self._sigints = 0
        self._finished_listeners: list[Callable[[BaseWorker], None]] = []

    def __repr__(self) -> str:
        return f"<WorkerRunner {self._name!r} {self._state.value} workers={len(self._workers)}>"

    @property
    def name(self) -> str:
        return self._name

    @property
    def bus(self) -> WorkerBus:
        return self._bus

    @property
    def registry(self) -> WorkerRegistry:
        """Ready workers, local and remote: ``name in runner.registry``."""
        return self._registry

    @property
    def state(self) -> RunnerState:
        return self._state

    @property
    def session(self) -> WorkerSession:
        """The runner's root session: ending it ends the runner."""
        return self._root

    def new_session(self, name: str) -> WorkerSession:
        """A new session for workers that end together without ending the runner.

        Raises:
            ConfigurationError: a session of that name is open.
        """
        if name in self._sessions or name == self._name:
            raise ConfigurationError(f"runner {self._name!r} already has a session {name!r}")
        session = WorkerSession(self, name)
        self._sessions[name] = session
        return session

    @property
    def workers(self) -> list[BaseWorker]:
        """The local workers, running or waiting for the runner to start."""
        return [*self._workers.values(), *self._pending.values()]

    def get_worker(self, name: str) -> BaseWorker | None:
        """The local worker called ``name`` (running or pending), or ``None``."""
        return self._workers.get(name) or self._pending.get(name)

    # -- workers ------------------------------------------------------------------------------

    async def add_workers(self, *workers: BaseWorker, session: WorkerSession | None = None) -> None:
        """Add workers: attached at once (their ``bus``, ``registry`` and ``worker_runner`` are
        set, and a job they request waits until its target is ready), started at once if the
        runner runs, else when it starts.

        Args:
            session: the session the workers join; default the runner's own, except that a
                :class:`~fastapi_busproxy.WebSocketProxyServer` gets a session of its own.

        Raises:
            DuplicateWorkerError: a worker with the same name is already in the runner (its
                name can be used again once it has finished).
            ConfigurationError: not a :class:`BaseWorker`.
            InvalidStateError: the runner is ending or has finished.
        """
        if self._state in (RunnerState.ENDING, RunnerState.FINISHED):
            raise InvalidStateError(
                f"runner {self._name!r} is {self._state.value}: create a new runner"
            )
        seen: set[str] = set()
        taken_over: set[BaseWorker] = set()
        for worker in workers:
            if not isinstance(worker, BaseWorker):
                raise ConfigurationError(f"add_workers() takes workers, not {worker!r}")
            existing = self.get_worker(worker.name)
            # A worker may take a newcomer of its name over, or make way for it (a resumable
            # proxy server and a reconnecting client: see WebSocketProxyServer).
            if (
                existing is not None
                and worker.name not in seen
                and await existing._make_way_for(worker)
            ):
                taken_over.add(worker)
                continue
            if worker.name in seen or self.get_worker(worker.name) is not None:
                raise DuplicateWorkerError(
                    f"a worker named {worker.name!r} is already in runner {self._name!r};"
                    " give each worker a unique name"
                )
            seen.add(worker.name)
        for worker in workers:
            if worker in taken_over:
                continue
            joined = session
            if joined is None:
                joined = self.new_session(worker.name) if worker._own_session else self._root
            await worker.attach(
                registry=self._registry, bus=self._bus, worker_runner=self, session=joined
            )
            joined._add(worker)
            worker.add_event_handler("on_finished", self._worker_finished)
            if self._state is RunnerState.RUNNING:
                await self._start_worker(worker)
            else:
                self._pending[worker.name] = worker

    async def _start_worker(self, worker: BaseWorker) -> None:
        self._workers[worker.name] = worker
        try:
            await worker._start()
        except BaseException as exc:
            self._workers.pop(worker.name, None)
            session = worker._session
            if session is not None and session._remove(worker):
                self._sessions.pop(session.name, None)
            if isinstance(exc, Exception):
                await self._call_event_handler("on_error", exc)
            raise

    def _worker_finished(self, worker: BaseWorker) -> None:
        if self._workers.get(worker.name) is worker:
            del self._workers[worker.name]
        if self._registry.is_local(worker.name):
            self._registry.unregister(worker.name)
        session = worker._session
        if session is not None and session._remove(worker):
            self._sessions.pop(session.name, None)
        for listener in list(self._finished_listeners):
            try:
                listener(worker)
            except Exception:
                logger.exception(
                    "runner %s: a finished listener failed on %s", self._name, worker.name
                )
        if self._auto_end and not self._workers and not self._pending:
            self._done.set()

    def add_finished_listener(self, listener: Callable[[BaseWorker], None]) -> None:
        """Call ``listener(worker)`` each time a worker has finished and left the runner.

        Called synchronously, in the worker's stop, after the runner has let the worker go: a
        listener must not wait (it may read the worker, for example to keep the counters of a
        link that ended). A listener that raises is logged. Adding one twice adds it once.
        """
        if listener not in self._finished_listeners:
            self._finished_listeners.append(listener)

    def remove_finished_listener(self, listener: Callable[[BaseWorker], None]) -> None:
        """Remove a listener added with :meth:`add_finished_listener` (if it is there)."""
        if listener in self._finished_listeners:
            self._finished_listeners.remove(listener)

    def session_of(self, worker_name: str) -> WorkerSession:
        """The session of the local worker ``worker_name`` (the root one for any other name)."""
        worker = self.get_worker(worker_name)
        session = worker._session if worker is not None else None
        return session or self._root

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the bus and the workers added so far. Starting twice does nothing.

        Raises:
            ConfigurationError: the runner has already finished.
        """
        if self._state is RunnerState.RUNNING:
            return
        if self._state is not RunnerState.CREATED:
            raise InvalidStateError(
                f"runner {self._name!r} has {self._state.value}; a runner runs once"
            )
        self._bus.bind_registry(self._registry)
        await self._bus.start()
        self._subscription = await self._bus.subscribe(
            self._name,
            self._on_bus_message,
            Interest(
                targets=frozenset((self._name,)),
                types=(
                    BusEndMessage,
                    BusCancelMessage,
                    BusWorkerRegistryMessage,
                    BusWorkerReadyMessage,
                    BusAddWorkerMessage,
                ),
            ),
        )
        self._state = RunnerState.RUNNING
        pending, self._pending = self._pending, {}
        for worker in pending.values():
            await self._start_worker(worker)
        await self._call_event_handler("on_ready")

    async def run(self, worker: BaseWorker | None = None, *, auto_end: bool = True) -> None:
        """Start, and run until the end.

        Args:
            worker: a worker to add first (the reference's older form of
                ``await runner.add_workers(worker); await runner.run()``).
            auto_end: ``True``: return once every worker has finished. ``False``: run until
                :meth:`end` or :meth:`cancel` is called.

        Cancelling ``run()`` cancels every worker and stops the bus.
        """
        self._auto_end = auto_end
        if worker is not None:
            await self.add_workers(worker)
        await self.start()
        restore = self._install_sigint()
        try:
            if auto_end and not self._workers:
                self._done.set()
            await self._done.wait()
        except asyncio.CancelledError:
            await asyncio.shield(self.cancel("run() was cancelled"))
            raise
        finally:
            if restore is not None:
                restore()
        await self._shutdown(cancel=False, reason=None)

    async def end(self, reason: str | None = None) -> None:
        """End every worker after its queued messages, then stop the bus.

        Called from a worker (its handler, or a task it owns), returns at once and the runner
        ends in its own task: waiting there would wait for the caller itself.
        """
        if not await self._handed_off(BusEndMessage, reason):
            await self._shutdown(cancel=False, reason=reason)

    async def cancel(self, reason: str | None = None) -> None:
        """Stop every worker at once, then stop the bus.

        Called from a worker (its handler, or a task it owns), returns at once as :meth:`end`.
        """
        if not await self._handed_off(BusCancelMessage, reason):
            await self._shutdown(cancel=True, reason=reason)

    async def _handed_off(
        self, kind: type[BusEndMessage] | type[BusCancelMessage], reason: str | None
    ) -> bool:
        # Stopping a worker cancels or waits for its tasks, so a worker's own task cannot run
        # the shutdown: the runner's delivery task does, on this (local) message.
        current = asyncio.current_task()
        if not any(current in worker._owned_tasks() for worker in self._workers.values()):
            return False
        if self._state in (RunnerState.RUNNING, RunnerState.ENDING):
            with contextlib.suppress(BusError):
                await self._bus.send(kind(source=self._name, target=self._name, reason=reason))
        return True

    async def _shutdown(self, *, cancel: bool, reason: str | None) -> None:
        if self._state is RunnerState.FINISHED:
            return
        if self._state is RunnerState.CREATED:
            self._state = RunnerState.FINISHED
            self._done.set()
            self._stopped.set()
            return
        if self._state is RunnerState.ENDING and not cancel:
            await self._wait_finished()
            return
        self._state = RunnerState.ENDING
        logger.info(
            "runner %s %s%s",
            self._name,
            "cancelling" if cancel else "ending",
            f": {reason}" if reason else "",
        )
        workers = list(self._workers.values())
        if cancel:
            await asyncio.gather(*(w._cancel_now(reason) for w in workers), return_exceptions=True)
        else:
            for worker in workers:
                await worker._request_end(reason)
            await asyncio.gather(*(w.wait() for w in workers), return_exceptions=True)
        if self._state is RunnerState.FINISHED:
            return
        self._subscription = None
        await self._registry.close()
        await self._bus.stop()
        self._state = RunnerState.FINISHED
        self._done.set()
        self._stopped.set()
        if self._force_gc:
            gc.collect()

    async def _wait_finished(self) -> None:
        await self._stopped.wait()

    async def __aenter__(self) -> WorkerRunner:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.end("runner closed")
        else:
            await self.cancel(f"runner closed by {type(exc).__name__}")

    def _install_sigint(self) -> Any:
        signals = [
            sig
            for sig, wanted in (
                (signal.SIGINT, self._handle_sigint),
                (signal.SIGTERM, self._handle_sigterm),
            )
            if wanted
        ]
        if not signals or threading.current_thread() is not threading.main_thread():
            return None
        loop = asyncio.get_running_loop()
        installed = []
        for sig in signals:
            try:
                loop.add_signal_handler(sig, self._on_sigint)
            except (NotImplementedError, RuntimeError):
                continue
            installed.append(sig)

        def restore() -> None:
            for sig in installed:
                loop.remove_signal_handler(sig)

        return restore

    def _on_sigint(self) -> None:
        self._sigints += 1
        action = self.end if self._sigints == 1 else self.cancel
        # The task is awaited by run(), which waits for the runner to finish.
        asyncio.get_running_loop().create_task(action("signal"))

    # -- bus ----------------------------------------------------------------------------------

    async def _on_bus_message(self, message: BusMessage) -> None:
        if isinstance(message, BusWorkerRegistryMessage):
            self._register_remote(message, message.workers)
        elif isinstance(message, BusWorkerReadyMessage):
            if message.origin is not None:
                entry = WorkerRegistryEntry(
                    name=message.source,
                    parent=message.parent,
                    active=message.active,
                    bridged=message.bridged,
                    started_at=message.started_at,
                )
                self._register_remote(message, [entry])
        elif isinstance(message, (BusEndMessage, BusCancelMessage)):
            if message.origin is not None:
                logger.warning(
                    "runner %s ignored %s from %s that arrived through %s:"
                    " remote peers cannot end or cancel the runner",
                    self._name,
                    type(message).__name__,
                    message.source,
                    message.origin,
                )
                return
            session = self.session_of(message.source)
            if isinstance(message, BusEndMessage):
                await session.end(message.reason)
            else:
                await session.cancel(message.reason)
        elif (
            isinstance(message, BusAddWorkerMessage)
            and message.origin is None
            and isinstance(message.worker, BaseWorker)
        ):
            await self.add_workers(message.worker, session=self.session_of(message.source))

    def _register_remote(self, message: BusMessage, entries: list[WorkerRegistryEntry]) -> None:
        # Only links (proxies, cross-process buses) report remote workers; they set origin.
        origin = message.origin
        if origin is None:
            logger.warning(
                "runner %s ignored %s sent in-process by %s: only links report remote workers",
                self._name,
                type(message).__name__,
                message.source,
            )
            return
        runner = getattr(message, "runner", None)
        for entry in entries:
            self._registry.register_remote(entry, origin=origin, runner=runner)
