"""The runner's registry of ready workers, local and remote.

A worker is *ready* once it is registered: local workers when they start, remote workers when
a proxy (or a cross-process bus) reports them. Remote entries record the link (``origin``)
that brought them, so that a link going down takes exactly its own workers away, and the
runner they live on.

Two ways to be told, both idempotent and both removed by the watcher when it no longer cares:

- ``await registry.watch(name, handler)``: the reference's form. ``handler(data)`` is a
  coroutine function called with a :class:`WorkerReadyData`, at once if ``name`` is ready,
  else each time it becomes ready. Later calls run in tasks the registry owns.
- :meth:`WorkerRegistry.add_watch`: a plain callback called synchronously with the
  :class:`~fastapi_busproxy.messages.WorkerRegistryEntry`.

:meth:`WorkerRegistry.wait_ready` waits for a name under a timeout. Nothing is left behind once
a wait is cancelled or answered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from ._tasks import TaskSet
from .exceptions import WorkerUnreachableError
from .messages import WorkerRegistryEntry

__all__ = [
    "RegistryWatch",
    "WorkerErrorData",
    "WorkerReadyData",
    "WorkerRegistry",
    "WorkerRegistryEntry",
]

logger = logging.getLogger(__name__)


@dataclass
class WorkerReadyData:
    """A worker that is ready: its name, and the name of the runner it lives on."""

    worker_name: str
    runner: str


@dataclass
class WorkerErrorData:
    """An error a child worker reported to its parent."""

    worker_name: str
    error: str


ReadyCallback = Callable[[WorkerRegistryEntry], None]
WatchHandler = Callable[[WorkerReadyData], Awaitable[Any]]
ChangeListener = Callable[[str, WorkerRegistryEntry, "str | None"], None]
"""``listener(change, entry, origin)``: change is ``"registered"`` or ``"unregistered"``."""


@dataclass
class _Record:
    entry: WorkerRegistryEntry
    origin: str | None  # None: a worker of this process
    runner: str


class RegistryWatch:
    """A registered callback (:meth:`WorkerRegistry.add_watch`); :meth:`cancel` removes it."""

    __slots__ = ("_callback", "_name", "_registry")

    def __init__(self, registry: WorkerRegistry, name: str, callback: ReadyCallback) -> None:
        self._registry: WorkerRegistry | None = registry
        self._name = name
        self._callback = callback

    def cancel(self) -> None:
        if self._registry is not None:
            self._registry._remove_watch(self._name, self)
            self._registry = None


class WorkerRegistry:
    """Names of the workers that are ready, with their entries and where they live.

    ``name in registry`` is true for a ready worker; :meth:`get` returns its
    :class:`WorkerReadyData` and :meth:`entry` its full
    :class:`~fastapi_busproxy.messages.WorkerRegistryEntry`.
    """

    def __init__(self, runner_name: str = "") -> None:
        self.runner_name = runner_name
        self._records: dict[str, _Record] = {}
        self._watches: dict[str, list[RegistryWatch]] = {}
        self._handlers: dict[str, list[WatchHandler]] = {}
        self._waiters: dict[str, set[asyncio.Future[WorkerRegistryEntry]]] = {}
        # Workers whose link has given up, with why: a wait for them fails at once.
        self._unreachable: dict[str, BaseException] = {}
        self._unreachable_handlers: list[Callable[[str, BaseException], None]] = []
        self._listeners: list[ChangeListener] = []
        self._tasks = TaskSet(f"registry:{runner_name}")

    # -- reading ------------------------------------------------------------------------------

    def __contains__(self, name: object) -> bool:
        return name in self._records

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._records))

    def __len__(self) -> int:
        return len(self._records)

    @property
    def local_workers(self) -> list[str]:
        """Names of the ready workers of this runner."""
        return [name for name, record in self._records.items() if record.origin is None]

    @property
    def remote_workers(self) -> list[str]:
        """Names of the ready workers reached through links."""
        return [name for name, record in self._records.items() if record.origin is not None]

    def get(self, name: str) -> WorkerReadyData | None:
        """The ready worker ``name`` (its name and runner), or ``None``."""
        record = self._records.get(name)
        return WorkerReadyData(name, record.runner) if record else None

    def entry(self, name: str) -> WorkerRegistryEntry | None:
        """The registry entry of the ready worker ``name``, or ``None``."""
        record = self._records.get(name)
        return record.entry if record else None

    def is_local(self, name: str) -> bool:
        record = self._records.get(name)
        return record is not None and record.origin is None

    def origin_of(self, name: str) -> str | None:
        """The link that brought the remote worker ``name`` (``None`` for local or unknown)."""
        record = self._records.get(name)
        return record.origin if record else None

    def names(self, *, origin: str | None = None) -> list[str]:
        """Names of the ready workers; with ``origin``, only those that link brought."""
        if origin is None:
            return list(self._records)
        return [name for name, record in self._records.items() if record.origin == origin]

    # -- registering --------------------------------------------------------------------------

    async def register(self, worker_data: WorkerReadyData) -> bool:
        """Register a ready worker; local when its runner is this registry's runner.

        Returns ``False`` (and changes nothing) if the name is already registered.
        """
        if worker_data.worker_name in self._records:
            return False
        entry = WorkerRegistryEntry(name=worker_data.worker_name, active=True)
        if worker_data.runner == self.runner_name:
            self.register_local(entry)
            return True
        return self.register_remote(entry, origin=worker_data.runner, runner=worker_data.runner)

    def register_local(self, entry: WorkerRegistryEntry) -> None:
        self._unreachable.pop(entry.name, None)
        self._records[entry.name] = _Record(entry, None, self.runner_name)
        self._changed("registered", entry, None)
        self._notify(entry)

    def register_remote(
        self, entry: WorkerRegistryEntry, *, origin: str, runner: str | None = None
    ) -> bool:
        """Register a worker reported by the link ``origin``, living on ``runner``.

        Returns ``False`` (and registers nothing) if a local worker has that name: a peer
        cannot shadow a worker of this process.
        """
        record = self._records.get(entry.name)
        if record is not None and record.origin is None:
            logger.warning(
                "link %s reported worker %s, which is a local worker of runner %s; ignored",
                origin,
                entry.name,
                self.runner_name,
            )
            return False
        if record is not None and record.origin != origin:
            logger.info(
                "worker %s is now reached through %s (was %s)", entry.name, origin, record.origin
            )
        self._unreachable.pop(entry.name, None)
        self._records[entry.name] = _Record(entry, origin, runner or origin)
        self._changed("registered", entry, origin)
        if record is None or record.origin != origin:
            self._notify(entry)
        return True

    def update(self, name: str, *, active: bool) -> None:
        record = self._records.get(name)
        if record is not None:
            record.entry = replace(record.entry, active=active)
            self._changed("registered", record.entry, record.origin)

    def unregister(self, name: str, *, origin: str | None = None) -> bool:
        """Forget ``name``; with ``origin``, only if that link brought it."""
        record = self._records.get(name)
        if record is None or (origin is not None and record.origin != origin):
            return False
        del self._records[name]
        self._changed("unregistered", record.entry, record.origin)
        return True

    def unregister_origin(self, origin: str) -> list[str]:
        """Forget every worker the link ``origin`` brought; returns their names."""
        names = self.names(origin=origin)
        for name in names:
            record = self._records.pop(name)
            self._changed("unregistered", record.entry, origin)
        return names

    # -- being told ---------------------------------------------------------------------------

    async def watch(self, worker_name: str, handler: WatchHandler) -> None:
        """Call ``await handler(data)`` when ``worker_name`` is ready: now, if it is.

        Idempotent: watching again with the same handler does nothing. A handler that raises
        is logged. Remove it with :meth:`unwatch`.
        """
        handlers = self._handlers.setdefault(worker_name, [])
        if handler in handlers:
            return
        handlers.append(handler)
        data = self.get(worker_name)
        if data is not None:
            await self._call(handler, data)

    def unwatch(self, worker_name: str, handler: WatchHandler) -> None:
        """Remove a handler added with :meth:`watch` (nothing happens if it is not there)."""
        handlers = self._handlers.get(worker_name)
        if handlers and handler in handlers:
            handlers.remove(handler)
            if not handlers:
                del self._handlers[worker_name]

    def add_watch(self, name: str, callback: ReadyCallback) -> RegistryWatch:
        """Call ``callback(entry)`` each time ``name`` becomes ready, at once if it is now."""
        watch = RegistryWatch(self, name, callback)
        self._watches.setdefault(name, []).append(watch)
        record = self._records.get(name)
        if record is not None:
            callback(record.entry)
        return watch

    def _remove_watch(self, name: str, watch: RegistryWatch) -> None:
        watches = self._watches.get(name)
        if watches and watch in watches:
            watches.remove(watch)
            if not watches:
                del self._watches[name]

    def add_listener(self, listener: ChangeListener) -> None:
        """Call ``listener(change, entry, origin)`` on every registration and removal.

        Used by cross-process buses to share the registry; called synchronously.
        """
        self._listeners.append(listener)

    def remove_listener(self, listener: ChangeListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def mark_unreachable(self, name: str, error: BaseException) -> None:
        """The link to ``name`` has given up with ``error``: whoever waits for ``name`` (now
        or later, until it registers) gets :class:`WorkerUnreachableError` at once."""
        if name in self._records:
            return
        self._unreachable[name] = error
        for waiter in self._waiters.get(name, ()):
            if not waiter.done():
                waiter.set_exception(_unreachable(name, error))
        for handler in list(self._unreachable_handlers):
            handler(name, error)

    def add_unreachable_handler(self, handler: Callable[[str, BaseException], None]) -> None:
        """Call ``handler(name, error)`` (synchronously) when a worker becomes unreachable:
        a requester ends the jobs it has in flight with it."""
        self._unreachable_handlers.append(handler)

    def remove_unreachable_handler(self, handler: Callable[[str, BaseException], None]) -> None:
        if handler in self._unreachable_handlers:
            self._unreachable_handlers.remove(handler)

    def clear_unreachable(self, name: str) -> None:
        """The link to ``name`` tries again: waits wait again."""
        self._unreachable.pop(name, None)

    async def wait_ready(self, name: str, timeout: float | None = None) -> WorkerRegistryEntry:
        """Wait until ``name`` is ready and return its entry.

        Raises:
            TimeoutError: ``name`` was not ready within ``timeout`` seconds.
            WorkerUnreachableError: the link to ``name`` has given up (see
                :meth:`mark_unreachable`).

        Cancelling is safe: the waiter is removed.
        """
        record = self._records.get(name)
        if record is not None:
            return record.entry
        error = self._unreachable.get(name)
        if error is not None:
            raise _unreachable(name, error)
        future: asyncio.Future[WorkerRegistryEntry] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(name, set())
        waiters.add(future)
        try:
            return await asyncio.wait_for(future, timeout)
        except WorkerUnreachableError:
            raise  # a TimeoutError too, but no timeout's
        except asyncio.TimeoutError:
            raise TimeoutError(f"worker {name!r} was not ready within {timeout}s") from None
        finally:
            waiters.discard(future)
            if not waiters:
                self._waiters.pop(name, None)

    def watcher_count(self) -> int:
        """Watchers and waiters still registered (for leak checks)."""
        return (
            sum(len(w) for w in self._watches.values())
            + sum(len(h) for h in self._handlers.values())
            + sum(len(w) for w in self._waiters.values())
        )

    async def close(self) -> None:
        """Cancel the watch handlers still running (the runner calls this when it stops)."""
        await self._tasks.cancel_all()

    def _changed(self, change: str, entry: WorkerRegistryEntry, origin: str | None) -> None:
        for listener in list(self._listeners):
            try:
                listener(change, entry, origin)
            except Exception:
                logger.exception("registry listener failed on %s %s", change, entry.name)

    def _notify(self, entry: WorkerRegistryEntry) -> None:
        for future in self._waiters.get(entry.name, ()):
            if not future.done():
                future.set_result(entry)
        for watch in list(self._watches.get(entry.name, ())):
            try:
                watch._callback(entry)
            except Exception:
                logger.exception("registry watcher of %s raised", entry.name)
        handlers = self._handlers.get(entry.name)
        if handlers:
            data = self.get(entry.name)
            assert data is not None
            for handler in list(handlers):
                self._tasks.spawn(self._call(handler, data), name=f"watch:{entry.name}")

    async def _call(self, handler: WatchHandler, data: WorkerReadyData) -> None:
        try:
            await handler(data)
        except Exception:
            logger.exception("registry watch handler of %s raised", data.worker_name)


def _unreachable(name: str, error: BaseException) -> WorkerUnreachableError:
    unreachable = WorkerUnreachableError(f"worker {name!r} is unreachable: {error}")
    unreachable.__cause__ = error
    return unreachable
