"""The runner's registry of ready workers, local and remote.

A worker is *ready* once it is registered: local workers when they start, remote workers when
a proxy (or a cross-process bus) reports them. Remote entries record the link (``origin``)
that brought them, so that a link going down takes exactly its own workers away.

Watchers are called synchronously, in the order they subscribed, whenever a watched name is
registered; :meth:`WorkerRegistry.wait_ready` waits for a name under a timeout. Both leave
nothing behind once cancelled or answered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from .messages import WorkerRegistryEntry

__all__ = ["RegistryWatch", "WorkerRegistry", "WorkerRegistryEntry"]

logger = logging.getLogger(__name__)

ReadyCallback = Callable[[WorkerRegistryEntry], None]
ChangeListener = Callable[[str, WorkerRegistryEntry, "str | None"], None]
"""``listener(change, entry, origin)``: change is ``"registered"`` or ``"unregistered"``."""


@dataclass
class _Record:
    entry: WorkerRegistryEntry
    origin: str | None  # None: a worker of this process


class RegistryWatch:
    """A registered watcher; :meth:`cancel` removes it."""

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
    :class:`~fastapi_busproxy.messages.WorkerRegistryEntry`.
    """

    def __init__(self, runner_name: str = "") -> None:
        self.runner_name = runner_name
        self._records: dict[str, _Record] = {}
        self._watches: dict[str, list[RegistryWatch]] = {}
        self._waiters: dict[str, set[asyncio.Future[WorkerRegistryEntry]]] = {}
        self._listeners: list[ChangeListener] = []

    def add_listener(self, listener: ChangeListener) -> None:
        """Call ``listener(change, entry, origin)`` on every registration and removal.

        Used by cross-process buses to share the registry; called synchronously.
        """
        self._listeners.append(listener)

    def remove_listener(self, listener: ChangeListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _changed(self, change: str, entry: WorkerRegistryEntry, origin: str | None) -> None:
        for listener in list(self._listeners):
            try:
                listener(change, entry, origin)
            except Exception:
                logger.exception("registry listener failed on %s %s", change, entry.name)

    def __contains__(self, name: object) -> bool:
        return name in self._records

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._records))

    def __len__(self) -> int:
        return len(self._records)

    def get(self, name: str) -> WorkerRegistryEntry | None:
        """The entry of the ready worker ``name``, or ``None``."""
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

    def register_local(self, entry: WorkerRegistryEntry) -> None:
        self._records[entry.name] = _Record(entry, None)
        self._changed("registered", entry, None)
        self._notify(entry)

    def register_remote(self, entry: WorkerRegistryEntry, *, origin: str) -> bool:
        """Register a worker reported by the link ``origin``.

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
        self._records[entry.name] = _Record(entry, origin)
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

    def watch(self, name: str, callback: ReadyCallback) -> RegistryWatch:
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

    async def wait_ready(self, name: str, timeout: float | None = None) -> WorkerRegistryEntry:
        """Wait until ``name`` is ready and return its entry.

        Raises:
            TimeoutError: ``name`` was not ready within ``timeout`` seconds.

        Cancelling is safe: the waiter is removed.
        """
        record = self._records.get(name)
        if record is not None:
            return record.entry
        future: asyncio.Future[WorkerRegistryEntry] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(name, set())
        waiters.add(future)
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"worker {name!r} was not ready within {timeout}s") from None
        finally:
            waiters.discard(future)
            if not waiters:
                self._waiters.pop(name, None)

    def watcher_count(self) -> int:
        """Watchers and waiters still registered (for leak checks)."""
        return sum(len(w) for w in self._watches.values()) + sum(
            len(w) for w in self._waiters.values()
        )

    def _notify(self, entry: WorkerRegistryEntry) -> None:
        for future in self._waiters.get(entry.name, ()):
            if not future.done():
                future.set_result(entry)
        for watch in list(self._watches.get(entry.name, ())):
            try:
                watch._callback(entry)
            except Exception:
                logger.exception("registry watcher of %s raised", entry.name)
