"""The runner: owns the bus, the workers and the registry of ready workers.

::

    runner = WorkerRunner()
    await runner.add_workers(Assistant("assistant"), Client("client"))
    await runner.run()            # until every worker has finished (auto_end=True)

In an application that runs for as long as it likes (a FastAPI app), use the runner as an
async context manager instead: ``async with runner:`` starts the bus, and leaving the block
ends the workers and stops the bus.

The runner obeys :class:`~fastapi_busproxy.messages.BusEndMessage` and
:class:`~fastapi_busproxy.messages.BusCancelMessage` without a target (or targeted at the
runner's name) only when they were sent in this process: a message that arrived from a remote
peer never ends or cancels the runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import signal
import threading
import uuid
from types import TracebackType
from typing import Any

from .bus import InMemoryBus, Subscription, WorkerBus
from .exceptions import BusError, ConfigurationError, DuplicateWorkerError
from .interest import Interest
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
from .worker import BaseWorker

__all__ = ["RunnerState", "WorkerRunner"]

logger = logging.getLogger(__name__)


class RunnerState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    ENDING = "ending"
    FINISHED = "finished"


class WorkerRunner:
    """Owns a bus and runs workers on it.

    Args:
        name: the runner's name (sent to peers in registry messages); default
            ``"runner-<8 hex digits>"``.
        bus: the bus; default a new :class:`~fastapi_busproxy.bus.InMemoryBus`.
        handle_sigint: in :meth:`run` on the main thread, end gracefully on the first Ctrl-C
            and cancel on the second.

    A runner runs once: after it has finished it cannot be started again.
    """

    def __init__(
        self,
        *,
        name: str | None = None,
        bus: WorkerBus | None = None,
        handle_sigint: bool = False,
    ) -> None:
        self._name = name or f"runner-{uuid.uuid4().hex[:8]}"
        self._bus = bus if bus is not None else InMemoryBus()
        self._handle_sigint = handle_sigint
        self._registry = WorkerRegistry(self._name)
        self._workers: dict[str, BaseWorker] = {}
        self._pending: dict[str, BaseWorker] = {}
        self._state = RunnerState.CREATED
        self._subscription: Subscription | None = None
        self._auto_end = False
        self._done = asyncio.Event()  # run() returns once set
        self._stopped = asyncio.Event()  # the runner has finished
        self._sigints = 0

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
    def workers(self) -> list[BaseWorker]:
        """The local workers, running or waiting for the runner to start."""
        return [*self._workers.values(), *self._pending.values()]

    def get_worker(self, name: str) -> BaseWorker | None:
        """The local worker called ``name`` (running or pending), or ``None``."""
        return self._workers.get(name) or self._pending.get(name)

    # -- workers ------------------------------------------------------------------------------

    async def add_workers(self, *workers: BaseWorker) -> None:
        """Add workers: started at once if the runner runs, else when it starts.

        Raises:
            DuplicateWorkerError: a worker with the same name is already in the runner (its
                name can be used again once it has finished).
            ConfigurationError: not a :class:`BaseWorker`, or the runner has finished.
        """
        if self._state in (RunnerState.ENDING, RunnerState.FINISHED):
            raise ConfigurationError(
                f"runner {self._name!r} is {self._state.value}: create a new runner"
            )
        seen: set[str] = set()
        for worker in workers:
            if not isinstance(worker, BaseWorker):
                raise ConfigurationError(f"add_workers() takes workers, not {worker!r}")
            if worker.name in seen or self.get_worker(worker.name) is not None:
                raise DuplicateWorkerError(
                    f"a worker named {worker.name!r} is already in runner {self._name!r};"
                    " give each worker a unique name"
                )
            seen.add(worker.name)
        for worker in workers:
            if self._state is RunnerState.RUNNING:
                await self._start_worker(worker)
            else:
                self._pending[worker.name] = worker

    async def _start_worker(self, worker: BaseWorker) -> None:
        self._workers[worker.name] = worker
        try:
            await worker._start(self)
        except BaseException:
            self._workers.pop(worker.name, None)
            raise

    def _worker_finished(self, worker: BaseWorker) -> None:
        if self._workers.get(worker.name) is worker:
            del self._workers[worker.name]
        if self._registry.is_local(worker.name):
            self._registry.unregister(worker.name)
        if self._auto_end and not self._workers and not self._pending:
            self._done.set()

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the bus and the workers added so far. Starting twice does nothing.

        Raises:
            ConfigurationError: the runner has already finished.
        """
        if self._state is RunnerState.RUNNING:
            return
        if self._state is not RunnerState.CREATED:
            raise ConfigurationError(
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

    async def run(self, auto_end: bool = True) -> None:
        """Start, and run until the end.

        Args:
            auto_end: ``True``: return once every worker has finished. ``False``: run until
                :meth:`end` or :meth:`cancel` is called.

        Cancelling ``run()`` cancels every worker and stops the bus.
        """
        self._auto_end = auto_end
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
            await asyncio.gather(*(w.cancel(reason) for w in workers), return_exceptions=True)
        else:
            for worker in workers:
                await worker.end(reason)
            await asyncio.gather(*(w.wait() for w in workers), return_exceptions=True)
        if self._state is RunnerState.FINISHED:
            return
        self._subscription = None
        await self._bus.stop()
        self._state = RunnerState.FINISHED
        self._done.set()
        self._stopped.set()

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
        if not self._handle_sigint or threading.current_thread() is not threading.main_thread():
            return None
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGINT, self._on_sigint)
        except (NotImplementedError, RuntimeError):
            return None
        return lambda: loop.remove_signal_handler(signal.SIGINT)

    def _on_sigint(self) -> None:
        self._sigints += 1
        action = self.end if self._sigints == 1 else self.cancel
        # The task is awaited by run(), which waits for the runner to finish.
        asyncio.get_running_loop().create_task(action("SIGINT"))

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
            if message.target not in (None, self._name):
                return  # addressed to a worker: its own business
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
            if isinstance(message, BusEndMessage):
                await self.end(message.reason)
            else:
                await self.cancel(message.reason)
        elif (
            isinstance(message, BusAddWorkerMessage)
            and message.origin is None
            and isinstance(message.worker, BaseWorker)
        ):
            await self.add_workers(message.worker)

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
        for entry in entries:
            self._registry.register_remote(entry, origin=origin)
