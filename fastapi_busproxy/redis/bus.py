"""RedisBus: one bus across processes and machines, through Redis.

Select it with ``BUSPROXY_BUS_URL=redis://host:6379/0`` (needs ``fastapi-busproxy[redis]``).

**Routing.** A message is delivered to the subscribers of the sending process directly, then
published to the channel of its target or, without a target, to the broadcast channel. Declared
interests in sources and types have channels too; a message is also published to those that some
process subscribes to (the cluster-wide set of such channels is kept in Redis). Each process
subscribes only to the channels its own subscribers want, so a message for a worker in one
process is received by that process only, and a process's cost per message does not grow with
the number of processes or with traffic meant for others. The names are in
:mod:`fastapi_busproxy.redis.keys`.

**Delivery.** ``delivery="pubsub"`` (the default): at most once. Redis pub/sub stores nothing: a
message published while a subscribing process is disconnected from Redis (restart, network cut)
is lost for that process. ``delivery="durable"``: a message for a worker of another process goes
through that worker's Redis stream instead, and is delivered once, in order, even across Redis
restarts (with Redis persisting every write) and the death of either process
(:mod:`fastapi_busproxy.redis.streams`); broadcasts and the source and type channels stay at
most once. Every process sharing a prefix must use the same mode. Either way, a send that Redis
does not accept is never lost silently: ``send()`` retries for up to ``publish_timeout`` seconds,
then raises :class:`~fastapi_busproxy.exceptions.BusUnavailableError`.

**Ordering.** Per sender and target, messages arrive in the order they were sent (one sender
awaits each publish). On arrival they enter the same bounded per-subscriber queues as in the
in-memory bus, so system messages overtake queued data messages there.

**Registry.** Workers are shared between the processes (:mod:`fastapi_busproxy.redis.replica`).
The listener is supervised: after a Redis restart it reconnects with backoff, resubscribes,
reloads the registry and reports :attr:`RedisBus.healthy` again.

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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import orjson

from .._tasks import TaskSet
from ..bus import DEFAULT_CAPACITY, DEFAULT_SYSTEM_CAPACITY, WorkerBus
from ..exceptions import (
    BusClosedError,
    BusFullError,
    BusUnavailableError,
    ConfigurationError,
    MessageDecodeError,
)
from ..messages import BusMessage, Overflow, is_local_only, mark_origin, set_trace_context
from ..proxy.reconnect import ReconnectPolicy
from ..serializers import JSONMessageSerializer, MessageSerializer
from .errors import redis_errors, retry_while_away
from .keys import PROCESS_LOCAL_TYPES, KeyScheme, decode_envelope, encode_envelope
from .replica import REMOTE, RegistryReplica
from .sessions import SessionDirectory
from .streams import DataLoss, StreamDelivery

if TYPE_CHECKING:
    from ..registry import WorkerRegistry

__all__ = ["DataLoss", "RedisBus", "RedisBusStats"]

logger = logging.getLogger("fastapi_busproxy.redis")

_DEDUPE_WINDOW = 4096
_MAX_LOSS_LISTENERS = 64
_ACK_ON_STOP = 2.0  # seconds a clean stop waits to acknowledge what its workers handled

Delivery = Literal["pubsub", "durable"]


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
    lost: int = 0  # durable: messages found missing from a stream (gaps in a sender's numbers)
    data_losses: int = 0  # durable: times Redis was found to have come back without its data


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
            :class:`BusUnavailableError`; in pub/sub mode also how long a message from Redis
            waits for room in a full local queue before it is dropped for that subscriber
            (counted; durable mode waits and leaves it in Redis).
        reconnect: backoff of the listener's reconnects.
        process_id: this process's id in Redis (default: random).
        delivery: ``"pubsub"`` (at most once) or ``"durable"`` (streams; see the module).
        stream_max_len / stream_max_age: the bounds of each durable stream (entries, seconds).

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
        delivery: Delivery = "pubsub",
        stream_max_len: int = 100_000,
        stream_max_age: float = 86_400.0,
    ) -> None:
        super().__init__(capacity=capacity, system_capacity=system_capacity)
        if heartbeat_ttl <= heartbeat_interval:
            raise ConfigurationError("heartbeat_ttl must be longer than heartbeat_interval")
        if delivery not in ("pubsub", "durable"):
            raise ConfigurationError(f"delivery must be 'pubsub' or 'durable', not {delivery!r}")
        if stream_max_len < 1 or stream_max_age <= 0:
            raise ConfigurationError("stream_max_len and stream_max_age must be positive")
        self.url = url
        self.prefix = prefix
        self.keys = KeyScheme(prefix)
        self.serializer = serializer or JSONMessageSerializer()
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_ttl = heartbeat_ttl
        self.publish_timeout = publish_timeout
        self.reconnect_policy = reconnect or ReconnectPolicy(initial_delay=0.1, max_delay=5.0)
        self.process_id = process_id or uuid.uuid4().hex[:12]
        self.delivery: Delivery = delivery
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
        self._rng = random.Random()
        self._epoch: bytes | None = None
        self._loss_listeners: list[Callable[[DataLoss], None]] = []
        self._replica = RegistryReplica(
            self.keys, self.process_id, self.serializer, heartbeat_ttl, self._refuse
        )
        self._streams: StreamDelivery | None = None
        # Targets sent through their stream though wanted here (counted: one per session).
        self._through_stream: dict[str, int] = {}
        self.sessions: SessionDirectory | None = None
        """Durable mode: the resumable sessions of the instances (see :mod:`.sessions`)."""
        if delivery == "durable":
            self.sessions = SessionDirectory(
                self.keys, self.process_id, heartbeat_ttl, publish_timeout
            )
            self._streams = StreamDelivery(
                self.keys,
                self.process_id,
                self.serializer,
                deliver=self._deliver_durable,
                retrying=self._retrying,
                wanted=self._index.wants_target,
                spawn=self._spawn,
                stats=self.stats,
                on_loss=self._report_loss,
                stream_max_len=stream_max_len,
                stream_max_age=stream_max_age,
            )

    # -- state --------------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """``True`` while the listener is connected and subscribed."""
        return self._healthy.is_set()

    async def wait_healthy(self) -> None:
        """Wait until the listener is connected (again)."""
        await self._healthy.wait()

    def bind_registry(self, registry: WorkerRegistry) -> None:
        self._replica.bind(registry)

    def send_through_stream(self, target: str) -> None:
        """Durable mode: send what this process sends to ``target`` through its stream, though
        a subscriber here wants it (the plugin does this for the remote worker of a session
        another instance may take over); undo with :meth:`stop_sending_through_stream`."""
        self._through_stream[target] = self._through_stream.get(target, 0) + 1

    def stop_sending_through_stream(self, target: str) -> None:
        count = self._through_stream.get(target, 0) - 1
        if count > 0:
            self._through_stream[target] = count
        else:
            self._through_stream.pop(target, None)

    def add_loss_listener(self, listener: Callable[[DataLoss], None]) -> None:
        """Call ``listener`` with each loss durable mode finds (it is logged and counted too)."""
        if len(self._loss_listeners) >= _MAX_LOSS_LISTENERS:
            raise ConfigurationError(f"at most {_MAX_LOSS_LISTENERS} loss listeners")
        self._loss_listeners.append(listener)

    def _report_loss(self, loss: DataLoss) -> None:
        for listener in list(self._loss_listeners):
            try:
                listener(loss)
            except Exception:
                logger.exception("redis bus %s: a loss listener failed", self.process_id)

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[None]:
        return self._tasks.spawn(coro, name=name)

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
        self._replica.redis = self._redis
        self._replica.active = True
        if self._streams is not None:
            self._streams.redis = self._redis
            self._streams.active = True
        if self.sessions is not None:
            self.sessions.redis = self._redis
        await self._connect_listener()
        self._tasks.spawn(self._listen(), name="listen")
        self._tasks.spawn(self._heartbeat_loop(), name="heartbeat")
        self._tasks.spawn(self._replica.announce_loop(), name="announce")
        logger.info(
            "redis bus %s connected to %s (%s)", self.process_id, self._safe_url(), self.delivery
        )

    async def stop(self) -> None:
        if not self._running and self._redis is None:
            return
        if self._streams is not None and self._running:
            await self._streams.acknowledge_all(_ACK_ON_STOP)
        self._running = False
        self._replica.active = False
        if self._streams is not None:
            self._streams.stop()
        await self._tasks.cancel_all()
        if self._redis is not None:
            with contextlib.suppress(Exception):
                pipe = self._redis.pipeline(transaction=False)
                self._replica.goodbye(pipe)
                await asyncio.wait_for(pipe.execute(), 2.0)
        await self._close_pubsub()
        for client in (self._redis, self._listener_redis):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()
        self._redis = self._listener_redis = None
        self._replica.redis = None
        self._healthy.clear()
        self._replica.forget_all()
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
        streams = self._streams
        target = message.target
        if (
            streams is not None
            and target is not None
            and (message.link_seq is not None or target in self._through_stream)
            and not is_local_only(message)
            and not isinstance(message, PROCESS_LOCAL_TYPES)
        ):
            # Through the stream even to a subscriber in this process: from a resumable link
            # (the reader drops what a client resuming here sends again after another
            # instance passed it on, and keeps it behind what that instance sent before), or
            # to a client's worker whose session another instance may take over (what this
            # process had not passed on yet is then still in the stream).
            await streams.add(message, message.origin)
            await self._publish_extra(message)
            return
        await self._deliver_local(message, overflow, timeout)
        if is_local_only(message) or isinstance(message, PROCESS_LOCAL_TYPES):
            return
        if streams is None or target is None:
            await self._publish(message)
            return
        if not self._index.wants_target(target):
            await streams.add(message, message.origin)
        await self._publish_extra(message)

    async def _publish_extra(self, message: BusMessage) -> None:
        """Durable mode: a copy for observers of its source or type elsewhere (at most once,
        as in pub/sub mode)."""
        if self._extra_channels:
            channels = self.keys.channels_for(message, self._extra_channels, durable=True)
            if channels:
                await self._publish(message, channels)

    async def _publish(self, message: BusMessage, channels: list[str] | None = None) -> None:
        self._seq += 1
        data = encode_envelope(
            self.process_id,
            self._seq,
            message.origin,
            self.serializer.serialize(message),
            message.trace_context,
        )
        if channels is None:
            channels = self.keys.channels_for(message, self._extra_channels)
        redis = self._redis

        async def attempt() -> None:
            if len(channels) == 1:
                await redis.publish(channels[0], data)
            else:
                pipe = redis.pipeline(transaction=False)
                for channel in channels:
                    pipe.publish(channel, data)
                await pipe.execute()

        await self._retrying(attempt, message)

    async def _retrying(self, attempt: Callable[[], Awaitable[None]], message: BusMessage) -> None:
        """Run ``attempt`` until Redis takes it, for up to ``publish_timeout`` seconds."""

        def refusal(exc: BaseException) -> str:
            self.stats.publish_failures += 1
            return (
                f"Redis at {self._safe_url()} did not take {type(message).__name__}"
                f" for {self.publish_timeout}s ({exc}); the message was not sent"
            )

        await retry_while_away(attempt, self.publish_timeout, refusal)
        self.stats.published += 1

    async def _deliver_durable(self, message: BusMessage) -> bool:
        """Hand a message from a stream to the local subscribers of its target, waiting for
        room however long it takes (it stays in Redis meanwhile); ``False`` if none is left
        to take it."""
        target = message.target
        assert target is not None
        if not self._index.wants_target(target):
            return False
        await self._deliver_local(message, Overflow.WAIT, None)
        return self._index.wants_target(target)  # else its subscriber left while it waited

    # -- interests ----------------------------------------------------------------------------

    async def _interest_changed(self) -> None:
        if not self._running or self._pubsub is None:
            return
        await self._sync_subscriptions()

    async def _sync_subscriptions(self) -> None:
        wanted = self.keys.wanted_channels(self._index)  # type: ignore[arg-type]
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
                extra = [c for c in plain if self.keys.is_extra(c)]
                if extra:
                    self._extra_channels.update(extra)
                    pipe = self._redis.pipeline(transaction=False)
                    pipe.sadd(self.keys.extra_channels, *extra)
                    for channel in extra:
                        pipe.publish(
                            self.keys.control, orjson.dumps({"op": "extra", "ch": channel})
                        )
                    await pipe.execute()
            if gone:
                plain = [c for c in gone if not c.endswith("*")]
                patterns = [c for c in gone if c.endswith("*")]
                if plain:
                    await self._pubsub.unsubscribe(*plain)
                if patterns:
                    await self._pubsub.punsubscribe(*patterns)
        except redis_errors() as exc:
            # The listener reconnects and resubscribes to what is wanted then.
            logger.warning("redis bus %s: could not update subscriptions: %s", self.process_id, exc)
            self._healthy.clear()
            return
        self._subscribed = (self._subscribed | new) - gone
        if self._streams is not None:  # subscribed first: no notice falls between
            self._streams.set_targets(self._index.targets())

    # -- listening ----------------------------------------------------------------------------

    async def _connect_listener(self) -> None:
        await self._close_pubsub()
        self._pubsub = self._listener_redis.pubsub()
        self._subscribed = set()
        await self._pubsub.subscribe(self.keys.control)
        self._subscribed.add(self.keys.control)
        members = await self._redis.smembers(self.keys.extra_channels)
        self._extra_channels = {m.decode() for m in members}
        if self._streams is not None:
            await self._check_epoch()
        await self._sync_subscriptions()
        await self._replica.load_registry()
        await self._replica.write_heartbeat()
        # Processes that reconnected before us took their snapshot without our workers.
        await self._redis.publish(
            self.keys.control, orjson.dumps({"op": "hello", "pid": self.process_id})
        )
        self._healthy.set()
        if self._streams is not None:
            self._streams.wake_all()  # notices sent while we were away are lost

    async def _check_epoch(self) -> None:
        """Durable mode: has Redis come back without its data since we last looked?"""
        redis = self._redis
        await redis.set(self.keys.epoch, uuid.uuid4().hex, nx=True)
        epoch = await redis.get(self.keys.epoch)
        if self._epoch is not None and epoch != self._epoch:
            self.stats.data_losses += 1
            logger.error(
                "redis bus %s: Redis at %s came back without its data: messages in its streams"
                " may be lost (counted per sender as they are found missing)",
                self.process_id,
                self._safe_url(),
            )
            self._report_loss(DataLoss("epoch"))
        self._epoch = epoch

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
            except redis_errors() as exc:
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
        if not isinstance(data, bytes) or not isinstance(channel, bytes):
            return
        if channel == self.keys.control.encode():
            self._on_control(data)
            return
        if not data and self._streams is not None:  # a notice: the target's stream has news
            prefix = self.keys.target("")
            name = channel.decode(errors="replace")
            if name.startswith(prefix):
                self._streams.wake(name[len(prefix) :])
            return
        try:
            envelope = decode_envelope(data)
        except MessageDecodeError as exc:
            self._refuse(f"{exc} on {channel!r}")
            return
        pid = envelope.process
        if pid == self.process_id:
            return  # delivered locally when it was sent
        key = (pid, envelope.seq)
        if key in self._seen_set:
            self.stats.duplicates += 1
            return
        if len(self._seen) == self._seen.maxlen:
            self._seen_set.discard(self._seen[0])
        self._seen.append(key)
        self._seen_set.add(key)
        self.stats.received += 1
        try:
            message = self.serializer.deserialize(envelope.payload)
        except MessageDecodeError as exc:
            self._refuse(f"{exc} (from process {pid})")
            return
        mark_origin(message, envelope.origin or REMOTE + pid)
        if envelope.trace_context is not None:
            set_trace_context(message, envelope.trace_context)
        try:
            await self._deliver_local(message, None, self.publish_timeout)
        except BusClosedError:
            return  # stopping
        except BusFullError as exc:
            self.stats.dropped += 1
            logger.warning("redis bus %s: %s", self.process_id, exc)

    def _on_control(self, data: bytes) -> None:
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            self._refuse("malformed control event")
            return
        if not isinstance(event, dict):
            self._refuse("control event is not an object")
            return
        if event.get("op") == "extra" and isinstance(event.get("ch"), str):
            self._extra_channels.add(event["ch"])
            return
        self._replica.on_event(event, self._spawn)

    def _refuse(self, detail: str) -> None:
        self.stats.rejected += 1
        logger.warning("redis bus %s: refused a message from Redis: %s", self.process_id, detail)

    # -- heartbeat ----------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while self._running:
            await asyncio.sleep(self.heartbeat_interval)
            if not self.healthy:
                continue
            try:
                await self._replica.write_heartbeat()
                await self._replica.check_processes()
                if self.sessions is not None:
                    await self.sessions.refresh()
            except redis_errors() as exc:
                logger.warning("redis bus %s: heartbeat failed: %s", self.process_id, exc)
