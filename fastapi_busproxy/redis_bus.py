"""RedisBus: one bus across processes and machines, through Redis pub/sub.

Select it with ``BUSPROXY_BUS_URL=redis://host:6379/0`` (needs ``fastapi-busproxy[redis]``).

**Routing.** A message is delivered to the subscribers of the sending process directly, then
published to the channel of its target (``<prefix>:t:<target>``) or, without a target, to the
broadcast channel (``<prefix>:b``). Declared interests in sources and types have channels too
(``<prefix>:s:<source>``, ``<prefix>:y:<type>``); a message is also published to those that
some process subscribes to (the cluster-wide set of such channels is kept in Redis). Each
process subscribes only to the channels its own subscribers want, so a message for a worker
in one process is received by that process only, and a process's cost per message does not
grow with the number of processes or with traffic meant for others.

**Ordering.** Per sender and target, messages arrive in the order they were sent (one sender
awaits each publish). On arrival they enter the same bounded per-subscriber queues as in the
in-memory bus, so system messages overtake queued data messages there.

**Registry.** Each process keeps its ready workers in a hash (``<prefix>:workers:<process
id>``) with a heartbeat key (``<prefix>:proc:<process id>``) that expires after
``heartbeat_ttl`` seconds; changes are announced on ``<prefix>:control``. A worker that starts
in one process is ready in the others; it is unknown again when it stops, when its process
stops, or, if the process dies, within ``heartbeat_ttl + heartbeat_interval`` seconds.

**Delivery guarantee: at most once.** Redis pub/sub does not store messages: a message
published while a subscribing process is disconnected from Redis (restart, network cut) is
lost for that process. A publish that Redis does not accept is never lost silently: ``send()``
retries for up to ``publish_timeout`` seconds, then raises
:class:`~fastapi_busproxy.exceptions.BusUnavailableError`. The listener is supervised: after a
Redis restart it reconnects with backoff, resubscribes, reloads the registry and reports
:attr:`RedisBus.healthy` again.

**Untrusted input.** Messages read from Redis go through the same safe codec as messages from
a WebSocket peer; a payload that does not decode is counted and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from ._tasks import TaskSet
from .bus import DEFAULT_CAPACITY, DEFAULT_SYSTEM_CAPACITY, WorkerBus
from .exceptions import (
    BusClosedError,
    BusFullError,
    BusUnavailableError,
    ConfigurationError,
    MessageDecodeError,
)
from .messages import (
    BusAddWorkerMessage,
    BusCancelMessage,
    BusDataMessage,
    BusEndMessage,
    BusMessage,
    BusSystemMessage,
    BusWorkerReadyMessage,
    BusWorkerRegistryMessage,
    Overflow,
    WorkerRegistryEntry,
    is_local_only,
    mark_origin,
    set_trace_context,
    wire_name_of,
)
from .proxy.framing import MAX_TRACE_CONTEXT
from .proxy.reconnect import ReconnectPolicy
from .serializers import JSONMessageSerializer, MessageSerializer

if TYPE_CHECKING:
    from .registry import WorkerRegistry

__all__ = ["RedisBus", "RedisBusStats"]

logger = logging.getLogger(__name__)

# Registry traffic is shared through the registry hashes instead; runner control stays local.
_PROCESS_LOCAL_TYPES = (
    BusWorkerRegistryMessage,
    BusWorkerReadyMessage,
    BusAddWorkerMessage,
)
_UNSHARED_INTEREST_TYPES = (*_PROCESS_LOCAL_TYPES, BusEndMessage, BusCancelMessage)
_BASE_TYPES = (BusMessage, BusDataMessage, BusSystemMessage)
_REMOTE = "redis:"
_DEDUPE_WINDOW = 4096
_MAX_PENDING_ANNOUNCEMENTS = 10_000


@dataclass
class RedisBusStats:
    """Counters of a :class:`RedisBus`."""

    published: int = 0
    received: int = 0
    duplicates: int = 0
    rejected: int = 0
    dropped: int = 0
    reconnects: int = 0
    publish_failures: int = 0  # sends that raised BusUnavailableError: Redis did not take them


class RedisBus(WorkerBus):
    """A :class:`WorkerBus` shared by every process connected to one Redis.

    Args:
        url: ``redis://[:password@]host:port/db`` (``rediss://`` for TLS).
        prefix: prefix of every key and channel, to share one Redis between apps.
        serializer: the codec of published messages (default JSON).
        capacity / system_capacity: per-subscriber queue sizes, as for every bus.
        heartbeat_interval: seconds between heartbeats (and registry checks).
        heartbeat_ttl: seconds after which a silent process is considered dead.
        publish_timeout: how long ``send()`` retries a publish before raising
            :class:`BusUnavailableError`; also how long a message from Redis waits for room in
            a full local queue before it is dropped for that subscriber (counted).
        reconnect: backoff of the listener's reconnects.
        process_id: this process's id in Redis (default: random).

    Worker names must be unique across the processes that share the bus.
    """

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        prefix: str = "busproxy",
        serializer: MessageSerializer | None = None,
        capacity: int = DEFAULT_CAPACITY,
        system_capacity: int = DEFAULT_SYSTEM_CAPACITY,
        heartbeat_interval: float = 2.0,
        heartbeat_ttl: float = 6.0,
        publish_timeout: float = 5.0,
        reconnect: ReconnectPolicy | None = None,
        process_id: str | None = None,
    ) -> None:
        super().__init__(capacity=capacity, system_capacity=system_capacity)
        if heartbeat_ttl <= heartbeat_interval:
            raise ConfigurationError("heartbeat_ttl must be longer than heartbeat_interval")
        self.url = url
        self.prefix = prefix
        self.serializer = serializer or JSONMessageSerializer()
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_ttl = heartbeat_ttl
        self.publish_timeout = publish_timeout
        self.reconnect_policy = reconnect or ReconnectPolicy(initial_delay=0.1, max_delay=5.0)
        self.process_id = process_id or uuid.uuid4().hex[:12]
        self.stats = RedisBusStats()
        self._redis: Any = None
        self._listener_redis: Any = None
        self._pubsub: Any = None
        self._tasks = TaskSet(f"redis-bus:{self.process_id}")
        self._healthy = asyncio.Event()
        self._subscribed: set[str] = set()
        self._extra_channels: set[str] = set()  # source/type channels someone subscribes to
        self._seq = 0
        self._seen: deque[tuple[str, int]] = deque(maxlen=_DEDUPE_WINDOW)
        self._seen_set: set[tuple[str, int]] = set()
        self._registry: WorkerRegistry | None = None
        self._remote_processes: set[str] = set()
        # How many times each process was forgotten: a registry load that awaited Redis
        # while its process was forgotten holds stale data and is dropped. Bounded: the
        # counts of processes no longer known are cleared past _FORGOTTEN_LIMIT.
        self._forgotten: dict[str, int] = {}
        self._announcements: deque[tuple[str, WorkerRegistryEntry]] = deque()
        self._announce_wakeup = asyncio.Event()
        self._rng = random.Random()
        self._control = f"{prefix}:control"
        self._extra_key = f"{prefix}:extra-channels"

    # -- state --------------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """``True`` while the listener is connected and subscribed."""
        return self._healthy.is_set()

    async def wait_healthy(self) -> None:
        """Wait until the listener is connected (again)."""
        await self._healthy.wait()

    def bind_registry(self, registry: WorkerRegistry) -> None:
        self._registry = registry
        registry.add_listener(self._on_registry_change)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to Redis, subscribe, load the shared registry and start the listener.

        Raises:
            ConfigurationError: the ``redis`` package is missing.
            BusUnavailableError: Redis cannot be reached.
        """
        if self._running:
            return
        try:
            import redis.asyncio as redis_asyncio
        except ImportError as exc:
            raise ConfigurationError(
                "RedisBus needs the redis package: pip install 'fastapi-busproxy[redis]'"
            ) from exc
        self._redis = redis_asyncio.Redis.from_url(
            self.url,
            socket_connect_timeout=self.publish_timeout,
            socket_timeout=self.publish_timeout,
        )
        try:
            await self._redis.ping()
        except Exception as exc:
            await self._redis.aclose()
            raise BusUnavailableError(f"cannot reach Redis at {self._safe_url()}: {exc}") from exc
        # The listener blocks reading: no read timeout there (keepalive finds dead peers).
        self._listener_redis = redis_asyncio.Redis.from_url(
            self.url,
            socket_connect_timeout=self.publish_timeout,
            socket_timeout=None,
            socket_keepalive=True,
        )
        self._running = True
        await self._connect_listener()
        self._tasks.spawn(self._listen(), name="listen")
        self._tasks.spawn(self._heartbeat_loop(), name="heartbeat")
        self._tasks.spawn(self._announce_loop(), name="announce")
        logger.info("redis bus %s connected to %s", self.process_id, self._safe_url())

    async def stop(self) -> None:
        if not self._running and self._redis is None:
            return
        self._running = False
        await self._tasks.cancel_all()
        if self._redis is not None:
            with contextlib.suppress(Exception):
                pipe = self._redis.pipeline(transaction=False)
                pipe.delete(self._proc_key(self.process_id), self._workers_key(self.process_id))
                pipe.publish(self._control, orjson.dumps({"op": "bye", "pid": self.process_id}))
                await asyncio.wait_for(pipe.execute(), 2.0)
        await self._close_pubsub()
        for client in (self._redis, self._listener_redis):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()
        self._redis = self._listener_redis = None
        self._healthy.clear()
        if self._registry is not None:
            for pid in list(self._remote_processes):
                self._registry.unregister_origin(_REMOTE + pid)
            self._remote_processes.clear()
        await super().stop()

    def _safe_url(self) -> str:
        # Never log a password.
        _, sep, tail = self.url.rpartition("@")
        return f"{self.url.split('://', 1)[0]}://***@{tail}" if sep else self.url

    # -- sending ------------------------------------------------------------------------------

    async def send(
        self,
        message: BusMessage,
        *,
        overflow: Overflow | None = None,
        timeout: float | None = None,
    ) -> None:
        await self._deliver_local(message, overflow, timeout)
        if is_local_only(message) or isinstance(message, _PROCESS_LOCAL_TYPES):
            return
        await self._publish(message)

    def _channels_for(self, message: BusMessage) -> list[str]:
        prefix = self.prefix
        target = message.target
        channels = [f"{prefix}:t:{target}" if target is not None else f"{prefix}:b"]
        extra = self._extra_channels
        if extra:
            source_channel = f"{prefix}:s:{message.source}"
            if source_channel in extra:
                channels.append(source_channel)
            for cls in type(message).__mro__:
                if cls in _BASE_TYPES or not issubclass(cls, BusMessage):
                    continue
                name = wire_name_of(cls)
                if name is not None and f"{prefix}:y:{name}" in extra:
                    channels.append(f"{prefix}:y:{name}")
        return channels

    async def _publish(self, message: BusMessage) -> None:
        payload = self.serializer.serialize(message)
        self._seq += 1
        context = message.trace_context
        if context is None:
            header = orjson.dumps([self.process_id, self._seq, message.origin])
        else:  # traced (fastapi_busproxy.tracing): the context travels in the header
            header = orjson.dumps([self.process_id, self._seq, message.origin, context.decode()])
        data = header + b"\n" + payload
        channels = self._channels_for(message)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.publish_timeout
        attempt = 0
        while True:
            try:
                if len(channels) == 1:
                    await self._redis.publish(channels[0], data)
                else:
                    pipe = self._redis.pipeline(transaction=False)
                    for channel in channels:
                        pipe.publish(channel, data)
                    await pipe.execute()
                self.stats.published += 1
                return
            except _redis_errors() as exc:
                attempt += 1
                remaining = deadline - loop.time()
                if remaining <= 0:
                    self.stats.publish_failures += 1
                    raise BusUnavailableError(
                        f"Redis at {self._safe_url()} did not take {type(message).__name__}"
                        f" for {self.publish_timeout}s ({exc}); the message was not sent"
                    ) from exc
                await asyncio.sleep(min(remaining, 0.05 * 2 ** min(attempt, 6)))

    # -- interests ----------------------------------------------------------------------------

    def _wanted_channels(self) -> set[str]:
        index = self._index
        prefix = self.prefix
        if index.wants_everything():
            # Every message is published to its target's or the broadcast channel.
            return {self._control, f"{prefix}:t:*", f"{prefix}:b"}
        wanted = {self._control, *(f"{prefix}:t:{name}" for name in index.targets())}
        if index.wants_broadcasts():
            wanted.add(f"{prefix}:b")
        wanted.update(f"{prefix}:s:{name}" for name in index.sources())
        for cls in index.types():
            if issubclass(cls, _UNSHARED_INTEREST_TYPES):
                continue
            if cls in _BASE_TYPES:
                # A process that wants every data message wants every channel.
                return {self._control, f"{prefix}:t:*", f"{prefix}:b"}
            name = wire_name_of(cls)
            if name is not None:
                wanted.add(f"{prefix}:y:{name}")
        return wanted

    async def _interest_changed(self) -> None:
        if not self._running or self._pubsub is None:
            return
        await self._sync_subscriptions()

    async def _sync_subscriptions(self) -> None:
        wanted = self._wanted_channels()
        new = wanted - self._subscribed
        gone = self._subscribed - wanted
        try:
            if new:
                plain = [c for c in new if not c.endswith("*")]
                patterns = [c for c in new if c.endswith("*")]
                if plain:
                    await self._pubsub.subscribe(*plain)
                if patterns:
                    await self._pubsub.psubscribe(*patterns)
                extra = [
                    c for c in plain if c.startswith((f"{self.prefix}:s:", f"{self.prefix}:y:"))
                ]
                if extra:
                    self._extra_channels.update(extra)
                    pipe = self._redis.pipeline(transaction=False)
                    pipe.sadd(self._extra_key, *extra)
                    for channel in extra:
                        pipe.publish(self._control, orjson.dumps({"op": "extra", "ch": channel}))
                    await pipe.execute()
            if gone:
                plain = [c for c in gone if not c.endswith("*")]
                patterns = [c for c in gone if c.endswith("*")]
                if plain:
                    await self._pubsub.unsubscribe(*plain)
                if patterns:
                    await self._pubsub.punsubscribe(*patterns)
        except _redis_errors() as exc:
            # The listener reconnects and resubscribes to what is wanted then.
            logger.warning("redis bus %s: could not update subscriptions: %s", self.process_id, exc)
            self._healthy.clear()
            return
        self._subscribed = (self._subscribed | new) - gone

    # -- listening ----------------------------------------------------------------------------

    async def _connect_listener(self) -> None:
        await self._close_pubsub()
        self._pubsub = self._listener_redis.pubsub()
        self._subscribed = set()
        await self._pubsub.subscribe(self._control)
        self._subscribed.add(self._control)
        members = await self._redis.smembers(self._extra_key)
        self._extra_channels = {m.decode() for m in members}
        await self._sync_subscriptions()
        await self._load_registry()
        await self._write_heartbeat()
        # Processes that reconnected before us took their snapshot without our workers.
        await self._redis.publish(
            self._control, orjson.dumps({"op": "hello", "pid": self.process_id})
        )
        self._healthy.set()

    async def _close_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def _listen(self) -> None:
        attempt = 0
        while self._running:
            try:
                if self._pubsub is None:
                    await self._connect_listener()
                    self.stats.reconnects += 1
                    logger.info("redis bus %s: reconnected and resubscribed", self.process_id)
                attempt = 0
                while True:
                    raw = await self._pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=None
                    )
                    if raw is not None:
                        await self._on_raw(raw)
            except asyncio.CancelledError:
                raise
            except _redis_errors() as exc:
                self._healthy.clear()
                await self._close_pubsub()
                attempt += 1
                delay = self.reconnect_policy.delay(attempt, self._rng.random())
                logger.warning(
                    "redis bus %s: lost Redis (%s); reconnecting in %.2fs",
                    self.process_id,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)

    async def _on_raw(self, raw: dict[str, Any]) -> None:
        channel = raw.get("channel")
        data = raw.get("data")
        if not isinstance(data, bytes):
            return
        if channel == self._control.encode():
            self._on_control(data)
            return
        head, sep, payload = data.partition(b"\n")
        context = None
        try:
            fields = orjson.loads(head) if sep else [None, None, None]
            pid, seq, origin = fields[:3]
            if len(fields) > 3 and isinstance(fields[3], str):
                context = fields[3].encode()
        except (orjson.JSONDecodeError, TypeError, ValueError, IndexError):
            pid = None
        if not isinstance(pid, str) or not isinstance(seq, int):
            self._refuse(f"an envelope without a valid header on {channel!r}")
            return
        if pid == self.process_id:
            return  # delivered locally when it was sent
        key = (pid, seq)
        if key in self._seen_set:
            self.stats.duplicates += 1
            return
        if len(self._seen) == self._seen.maxlen:
            self._seen_set.discard(self._seen[0])
        self._seen.append(key)
        self._seen_set.add(key)
        self.stats.received += 1
        try:
            message = self.serializer.deserialize(payload)
        except MessageDecodeError as exc:
            self._refuse(f"{exc} (from process {pid})")
            return
        mark_origin(message, origin if isinstance(origin, str) else _REMOTE + pid)
        if context is not None and len(context) <= MAX_TRACE_CONTEXT:
            set_trace_context(message, context)
        try:
            await self._deliver_local(message, None, self.publish_timeout)
        except BusClosedError:
            return  # stopping
        except BusFullError as exc:
            self.stats.dropped += 1
            logger.warning("redis bus %s: %s", self.process_id, exc)

    def _refuse(self, detail: str) -> None:
        self.stats.rejected += 1
        logger.warning("redis bus %s: refused a message from Redis: %s", self.process_id, detail)

    # -- the shared registry ------------------------------------------------------------------

    def _proc_key(self, pid: str) -> str:
        return f"{self.prefix}:proc:{pid}"

    def _workers_key(self, pid: str) -> str:
        return f"{self.prefix}:workers:{pid}"

    def _encode_entry(self, entry: WorkerRegistryEntry) -> bytes:
        return self.serializer.serialize(
            BusWorkerRegistryMessage(
                source=self.process_id, runner=self.process_id, workers=[entry]
            )
        )

    def _decode_entries(self, data: bytes) -> list[WorkerRegistryEntry]:
        message = self.serializer.deserialize(data)
        if not isinstance(message, BusWorkerRegistryMessage):
            raise MessageDecodeError(f"expected a registry message, got {type(message).__name__}")
        return message.workers

    def _shared_entries(self) -> dict[str, WorkerRegistryEntry]:
        registry = self._registry
        if registry is None:
            return {}
        shared = {}
        for name in registry.names():
            origin = registry.origin_of(name)
            if origin is None or not origin.startswith(_REMOTE):
                entry = registry.entry(name)
                if entry is not None:
                    shared[name] = entry
        return shared

    def _on_registry_change(
        self, change: str, entry: WorkerRegistryEntry, origin: str | None
    ) -> None:
        if origin is not None and origin.startswith(_REMOTE):
            return  # learnt from Redis: not ours to announce
        if not self._running:
            return
        if len(self._announcements) >= _MAX_PENDING_ANNOUNCEMENTS:
            # Far behind (Redis down?): the next heartbeat rewrites the whole hash anyway.
            self._announcements.clear()
        self._announcements.append((change, entry))
        self._announce_wakeup.set()

    async def _announce_loop(self) -> None:
        # One task, so that announcements reach Redis in the order the changes happened.
        while self._running:
            await self._announce_wakeup.wait()
            self._announce_wakeup.clear()
            while self._announcements and self._running:
                change, entry = self._announcements.popleft()
                await self._announce(change, entry)

    async def _announce(self, change: str, entry: WorkerRegistryEntry) -> None:
        try:
            pipe = self._redis.pipeline(transaction=False)
            if change == "registered":
                encoded = self._encode_entry(entry)
                pipe.hset(self._workers_key(self.process_id), entry.name, encoded)
                event = {"op": "register", "pid": self.process_id, "entry": encoded.decode()}
            else:
                pipe.hdel(self._workers_key(self.process_id), entry.name)
                event = {"op": "unregister", "pid": self.process_id, "name": entry.name}
            pipe.expire(self._workers_key(self.process_id), int(self.heartbeat_ttl) + 1)
            pipe.publish(self._control, orjson.dumps(event))
            await pipe.execute()
        except _redis_errors() as exc:
            # The next heartbeat rewrites the whole hash.
            logger.warning("redis bus %s: registry update deferred: %s", self.process_id, exc)

    def _on_control(self, data: bytes) -> None:
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            self._refuse("malformed control event")
            return
        if not isinstance(event, dict):
            self._refuse("control event is not an object")
            return
        op, pid = event.get("op"), event.get("pid")
        if op == "extra" and isinstance(event.get("ch"), str):
            self._extra_channels.add(event["ch"])
            return
        if not isinstance(pid, str) or pid == self.process_id or self._registry is None:
            return
        origin = _REMOTE + pid
        if op == "register" and isinstance(event.get("entry"), str):
            try:
                entries = self._decode_entries(event["entry"].encode())
            except MessageDecodeError as exc:
                self._refuse(f"registry entry from process {pid}: {exc}")
                return
            self._remote_processes.add(pid)
            for entry in entries:
                self._registry.register_remote(entry, origin=origin)
        elif op == "unregister" and isinstance(event.get("name"), str):
            self._registry.unregister(event["name"], origin=origin)
        elif op == "bye":
            self._forget_process(pid)
        elif op == "hello":
            self._tasks.spawn(self._load_process(pid), name=f"load:{pid}")

    def _forget_process(self, pid: str) -> None:
        self._remote_processes.discard(pid)
        forgotten = self._forgotten
        if len(forgotten) >= _FORGOTTEN_LIMIT:
            for known in [p for p in forgotten if p not in self._remote_processes]:
                del forgotten[known]
        forgotten[pid] = forgotten.get(pid, 0) + 1
        if self._registry is not None:
            gone = self._registry.unregister_origin(_REMOTE + pid)
            if gone:
                logger.info("redis bus %s: process %s is gone with %s", self.process_id, pid, gone)

    async def _load_process(self, pid: str) -> None:
        forgotten = self._forgotten.get(pid, 0)
        try:
            workers = await self._redis.hgetall(self._workers_key(pid))
        except _redis_errors() as exc:
            logger.warning("redis bus %s: cannot load process %s: %s", self.process_id, pid, exc)
            return
        if self._forgotten.get(pid, 0) != forgotten:
            return  # it died while we read: what we read is stale (a dead process's workers)
        self._register_process(pid, workers)

    def _register_process(self, pid: str, workers: dict[bytes, bytes]) -> None:
        if self._registry is None:
            return
        self._remote_processes.add(pid)
        origin = _REMOTE + pid
        names = set()
        for encoded in workers.values():
            try:
                entries = self._decode_entries(encoded)
            except MessageDecodeError as exc:
                self._refuse(f"registry entry of process {pid}: {exc}")
                continue
            for entry in entries:
                names.add(entry.name)
                if self._registry.origin_of(entry.name) != origin:
                    self._registry.register_remote(entry, origin=origin)
        for name in self._registry.names(origin=origin):
            if name not in names:
                self._registry.unregister(name, origin=origin)

    async def _load_registry(self) -> None:
        """Register every worker of every live process (after start or a reconnect)."""
        if self._registry is None:
            return
        found: dict[str, dict[bytes, bytes]] = {}
        forgotten: dict[str, int] = {}
        async for key in self._redis.scan_iter(match=f"{self.prefix}:workers:*", count=100):
            pid = key.decode().rsplit(":", 1)[-1]
            forgotten[pid] = self._forgotten.get(pid, 0)
            if pid == self.process_id or not await self._redis.exists(self._proc_key(pid)):
                continue
            found[pid] = await self._redis.hgetall(key)
        for pid in self._remote_processes - set(found):
            self._forget_process(pid)
        for pid, workers in found.items():
            if self._forgotten.get(pid, 0) == forgotten[pid]:  # else it died while we read
                self._register_process(pid, workers)

    async def _write_heartbeat(self) -> None:
        ttl_ms = int(self.heartbeat_ttl * 1000)
        shared = self._shared_entries()
        pipe = self._redis.pipeline(transaction=True)
        pipe.set(self._proc_key(self.process_id), b"1", px=ttl_ms)
        pipe.delete(self._workers_key(self.process_id))
        if shared:
            pipe.hset(
                self._workers_key(self.process_id),
                mapping={name: self._encode_entry(entry) for name, entry in shared.items()},
            )
            pipe.pexpire(self._workers_key(self.process_id), ttl_ms)
        await pipe.execute()

    async def _heartbeat_loop(self) -> None:
        while self._running:
            await asyncio.sleep(self.heartbeat_interval)
            if not self.healthy:
                continue
            try:
                await self._write_heartbeat()
                for pid in list(self._remote_processes):
                    if not await self._redis.exists(self._proc_key(pid)):
                        self._forget_process(pid)
            except _redis_errors() as exc:
                logger.warning("redis bus %s: heartbeat failed: %s", self.process_id, exc)


_FORGOTTEN_LIMIT = 4096


def _redis_errors() -> tuple[type[BaseException], ...]:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return (RedisConnectionError, RedisTimeoutError, OSError, ConnectionError)
