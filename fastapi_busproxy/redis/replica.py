"""The worker registry, replicated between the processes of one Redis bus.

Each process keeps its ready workers in a hash (``<prefix>:workers:<process>``) beside a
heartbeat key (``<prefix>:proc:<process>``) that expires after ``heartbeat_ttl`` seconds, and
announces each change on ``<prefix>:control``. A worker that starts in one process is ready in
the others; it is unknown again when it stops, when its process stops, or, if the process dies,
within ``heartbeat_ttl + heartbeat_interval`` seconds. The bus owns the connection and the
tasks; this class decides what to write and what to believe.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from ..exceptions import MessageDecodeError
from ..messages import BusWorkerRegistryMessage, WorkerRegistryEntry
from ..serializers import MessageSerializer
from .errors import redis_errors
from .keys import KeyScheme

if TYPE_CHECKING:
    from ..registry import WorkerRegistry

__all__ = ["REMOTE", "RegistryReplica"]

logger = logging.getLogger("fastapi_busproxy.redis")

REMOTE = "redis:"
"""The origin of a worker learnt from Redis is ``redis:<process id>``."""

_MAX_PENDING_ANNOUNCEMENTS = 10_000
_FORGOTTEN_LIMIT = 4096


class RegistryReplica:
    def __init__(
        self,
        keys: KeyScheme,
        process_id: str,
        serializer: MessageSerializer,
        heartbeat_ttl: float,
        refuse: Callable[[str], None],
    ) -> None:
        self.keys = keys
        self.process_id = process_id
        self.serializer = serializer
        self.heartbeat_ttl = heartbeat_ttl
        self.redis: Any = None  # the bus's command connection, while it runs
        self.active = False
        self.registry: WorkerRegistry | None = None
        self._refuse = refuse
        self.remote_processes: set[str] = set()
        # How many times each process was forgotten: a registry load that awaited Redis while
        # its process was forgotten holds stale data and is dropped. Bounded: the counts of
        # processes no longer known are cleared past _FORGOTTEN_LIMIT.
        self._forgotten: dict[str, int] = {}
        self._announcements: deque[tuple[str, WorkerRegistryEntry]] = deque()
        self._announce_wakeup = asyncio.Event()

    def bind(self, registry: WorkerRegistry) -> None:
        self.registry = registry
        registry.add_listener(self._on_registry_change)

    # -- what we write --------------------------------------------------------------------------

    def encode_entry(self, entry: WorkerRegistryEntry) -> bytes:
        return self.serializer.serialize(
            BusWorkerRegistryMessage(
                source=self.process_id, runner=self.process_id, workers=[entry]
            )
        )

    def _shared_entries(self) -> dict[str, WorkerRegistryEntry]:
        registry = self.registry
        if registry is None:
            return {}
        shared = {}
        for name in registry.names():
            origin = registry.origin_of(name)
            if origin is None or not origin.startswith(REMOTE):
                entry = registry.entry(name)
                if entry is not None:
                    shared[name] = entry
        return shared

    def _on_registry_change(
        self, change: str, entry: WorkerRegistryEntry, origin: str | None
    ) -> None:
        if origin is not None and origin.startswith(REMOTE):
            return  # learnt from Redis: not ours to announce
        if not self.active:
            return
        if len(self._announcements) >= _MAX_PENDING_ANNOUNCEMENTS:
            # Far behind (Redis down?): the next heartbeat rewrites the whole hash anyway.
            self._announcements.clear()
        self._announcements.append((change, entry))
        self._announce_wakeup.set()

    async def announce_loop(self) -> None:
        # One task, so that announcements reach Redis in the order the changes happened.
        while self.active:
            await self._announce_wakeup.wait()
            self._announce_wakeup.clear()
            while self._announcements and self.active:
                change, entry = self._announcements.popleft()
                await self._announce(change, entry)

    async def _announce(self, change: str, entry: WorkerRegistryEntry) -> None:
        workers = self.keys.workers(self.process_id)
        try:
            pipe = self.redis.pipeline(transaction=False)
            if change == "registered":
                encoded = self.encode_entry(entry)
                pipe.hset(workers, entry.name, encoded)
                event = {"op": "register", "pid": self.process_id, "entry": encoded.decode()}
            else:
                pipe.hdel(workers, entry.name)
                event = {"op": "unregister", "pid": self.process_id, "name": entry.name}
            pipe.expire(workers, int(self.heartbeat_ttl) + 1)
            pipe.publish(self.keys.control, orjson.dumps(event))
            await pipe.execute()
        except redis_errors() as exc:
            # The next heartbeat rewrites the whole hash.
            logger.warning("redis bus %s: registry update deferred: %s", self.process_id, exc)

    async def write_heartbeat(self) -> None:
        ttl_ms = int(self.heartbeat_ttl * 1000)
        shared = self._shared_entries()
        workers = self.keys.workers(self.process_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(self.keys.process(self.process_id), b"1", px=ttl_ms)
        pipe.delete(workers)
        if shared:
            pipe.hset(
                workers, mapping={name: self.encode_entry(entry) for name, entry in shared.items()}
            )
            pipe.pexpire(workers, ttl_ms)
        await pipe.execute()

    def goodbye(self, pipe: Any) -> None:
        """Add to ``pipe`` what a stopping process removes and says."""
        pipe.delete(self.keys.process(self.process_id), self.keys.workers(self.process_id))
        pipe.publish(self.keys.control, orjson.dumps({"op": "bye", "pid": self.process_id}))

    # -- what we learn --------------------------------------------------------------------------

    def on_event(self, event: dict[str, Any], spawn: Callable[[Any, str], Any]) -> None:
        """A registry event from ``<prefix>:control`` (already parsed)."""
        op, pid = event.get("op"), event.get("pid")
        if not isinstance(pid, str) or pid == self.process_id or self.registry is None:
            return
        origin = REMOTE + pid
        if op == "register" and isinstance(event.get("entry"), str):
            try:
                entries = self._decode_entries(event["entry"].encode())
            except MessageDecodeError as exc:
                self._refuse(f"registry entry from process {pid}: {exc}")
                return
            self.remote_processes.add(pid)
            for entry in entries:
                self.registry.register_remote(entry, origin=origin)
        elif op == "unregister" and isinstance(event.get("name"), str):
            self.registry.unregister(event["name"], origin=origin)
        elif op == "bye":
            self.forget_process(pid)
        elif op == "hello":
            spawn(self.load_process(pid), f"load:{pid}")

    def _decode_entries(self, data: bytes) -> list[WorkerRegistryEntry]:
        message = self.serializer.deserialize(data)
        if not isinstance(message, BusWorkerRegistryMessage):
            raise MessageDecodeError(f"expected a registry message, got {type(message).__name__}")
        return message.workers

    def forget_process(self, pid: str) -> None:
        self.remote_processes.discard(pid)
        forgotten = self._forgotten
        if len(forgotten) >= _FORGOTTEN_LIMIT:
            for known in [p for p in forgotten if p not in self.remote_processes]:
                del forgotten[known]
        forgotten[pid] = forgotten.get(pid, 0) + 1
        if self.registry is not None:
            gone = self.registry.unregister_origin(REMOTE + pid)
            if gone:
                logger.info("redis bus %s: process %s is gone with %s", self.process_id, pid, gone)

    def forget_all(self) -> None:
        if self.registry is not None:
            for pid in list(self.remote_processes):
                self.registry.unregister_origin(REMOTE + pid)
        self.remote_processes.clear()

    async def load_process(self, pid: str) -> None:
        forgotten = self._forgotten.get(pid, 0)
        try:
            workers = await self.redis.hgetall(self.keys.workers(pid))
        except redis_errors() as exc:
            logger.warning("redis bus %s: cannot load process %s: %s", self.process_id, pid, exc)
            return
        if self._forgotten.get(pid, 0) != forgotten:
            return  # it died while we read: what we read is stale (a dead process's workers)
        self._register_process(pid, workers)

    def _register_process(self, pid: str, workers: dict[bytes, bytes]) -> None:
        if self.registry is None:
            return
        self.remote_processes.add(pid)
        origin = REMOTE + pid
        names = set()
        for encoded in workers.values():
            try:
                entries = self._decode_entries(encoded)
            except MessageDecodeError as exc:
                self._refuse(f"registry entry of process {pid}: {exc}")
                continue
            for entry in entries:
                names.add(entry.name)
                if self.registry.origin_of(entry.name) != origin:
                    self.registry.register_remote(entry, origin=origin)
        for name in self.registry.names(origin=origin):
            if name not in names:
                self.registry.unregister(name, origin=origin)

    async def load_registry(self) -> None:
        """Register every worker of every live process (after start or a reconnect)."""
        if self.registry is None:
            return
        found: dict[str, dict[bytes, bytes]] = {}
        forgotten: dict[str, int] = {}
        async for key in self.redis.scan_iter(match=self.keys.every_workers, count=100):
            pid = self.keys.pid_of_workers(key.decode())
            forgotten[pid] = self._forgotten.get(pid, 0)
            if pid == self.process_id or not await self.redis.exists(self.keys.process(pid)):
                continue
            found[pid] = await self.redis.hgetall(key)
        for pid in self.remote_processes - set(found):
            self.forget_process(pid)
        for pid, workers in found.items():
            if self._forgotten.get(pid, 0) == forgotten[pid]:  # else it died while we read
                self._register_process(pid, workers)

    async def check_processes(self) -> None:
        """Forget the processes whose heartbeat expired."""
        for pid in list(self.remote_processes):
            if not await self.redis.exists(self.keys.process(pid)):
                self.forget_process(pid)

    async def is_alive(self, pid: str) -> bool:
        return bool(await self.redis.exists(self.keys.process(pid)))
