"""Durable delivery: the messages for a worker go through a Redis stream of their own.

Chosen with ``RedisBus(delivery="durable")`` (``BUSPROXY_BUS_DELIVERY=durable``). A message with
a target that no subscriber of the sending process wants, or that came over a resumable link, is
added to the target's stream (``<prefix>:q:<target>``) and a notice goes to the target's
channel. The process whose subscribers want that target (the worker's, or the proxy of a remote
worker) reads the stream in the consumer group ``workers`` and hands each message to the bus's
local queues with a receipt (:mod:`fastapi_busproxy._receipt`); once every subscriber that took
it has handled it, the reader acknowledges it and records, per sender, the last number handled
(one transaction, with whatever else was handled while the previous one was on its way).

- **Sending.** ``send()`` returns once Redis has the message; while Redis is unreachable it
  retries for ``publish_timeout`` seconds, then raises ``BusUnavailableError``.
- **Kept for a worker that is down.** The stream keeps what nobody reads (bounded, below) until
  a subscriber of that target starts in some process; it reads from the oldest entry.
- **Taking over.** A process that starts reading a target claims what other readers of it had
  read and not acknowledged (worker names are unique: another reader is a previous host, gone or
  going), before anything new: what a killed process had queued or was handling is delivered
  again, and only a message handled whose acknowledgement had not reached Redis is repeated.
- **No repeats, no silent gaps.** Each sender numbers its messages per target; the reader drops a
  number it has delivered (a redelivery, a retried send) and counts and logs a skipped one: what
  the stream lost unread (trimmed, or Redis lost its data).
- **Order.** Per sender and target, messages are delivered in the order they were sent.
- **Bounds.** A stream holds about ``stream_max_len`` entries (Redis trims the oldest, whole
  nodes at a time) and none older than ``stream_max_age`` seconds; a stream nobody writes to for
  ``stream_max_age`` is removed. A reader takes ``batch`` entries at a time and waits for room
  in the worker's queue before taking more: a slow worker leaves its messages in Redis, and
  holds back only its own stream.
- **Tasks.** Per target, one task while it has unread entries and one while it has handled
  entries to acknowledge.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._receipt import Receipt, attach_receipt
from ..exceptions import BusClosedError, MessageDecodeError
from ..messages import BusMessage, mark_origin, set_trace_context
from ..proxy.reconnect import ReconnectPolicy
from .errors import redis_errors
from .keys import GROUP, KeyScheme, decode_envelope, encode_envelope
from .ledger import SESSION_SENDER, DeliveryLedger, SendCounters, parse_record, record_value

if TYPE_CHECKING:
    from ..serializers import MessageSerializer

__all__ = ["DataLoss", "StreamDelivery"]

logger = logging.getLogger("fastapi_busproxy.redis")


@dataclass(frozen=True)
class DataLoss:
    """Messages the bus knows it lost: ``count`` messages from ``sender`` to ``target`` never
    delivered (``reason="gap"``), or Redis came back without its data (``reason="epoch"``,
    ``count`` 0: what was lost shows as gaps when the senders send again)."""

    reason: str
    target: str | None = None
    sender: str | None = None
    count: int = 0


class _Unwanted(Exception):
    """Nobody in this process wants the stream's target any more."""


@dataclass
class _Reader:
    target: str
    ledger: DeliveryLedger
    task: asyncio.Task[None] | None = None
    again: bool = False
    prepared: bool = False
    attempt: int = 0
    # Entries handed to the local bus and not yet handled (bounded by what holds them: the
    # subscribers' queues, a batch, a proxy's send queue and its session's unpersisted
    # replay): a read of this process's pending entries skips them.
    in_flight: set[bytes] = field(default_factory=set)
    # Handled, to acknowledge: entry ids, and the last number handled per sender.
    acks: list[bytes] = field(default_factory=list)
    record: dict[str, int] = field(default_factory=dict)
    acking: asyncio.Task[None] | None = None
    prune_at: float = 0.0  # when to drop the record's stale senders next (monotonic)


class StreamDelivery:
    """The durable half of a :class:`~fastapi_busproxy.redis.RedisBus` (see the module)."""

    def __init__(
        self,
        keys: KeyScheme,
        process_id: str,
        serializer: MessageSerializer,
        *,
        deliver: Callable[[BusMessage], Awaitable[bool]],
        retrying: Callable[[Callable[[], Awaitable[None]], BusMessage], Awaitable[None]],
        wanted: Callable[[str], bool],
        spawn: Callable[[Any, str], asyncio.Task[None]],
        stats: Any,
        on_loss: Callable[[DataLoss], None],
        stream_max_len: int,
        stream_max_age: float,
        batch: int = 64,
        reconnect: ReconnectPolicy | None = None,
    ) -> None:
        self.keys = keys
        self.process_id = process_id
        self.serializer = serializer
        self.redis: Any = None
        self.active = False
        self.stream_max_len = stream_max_len
        self.stream_max_age = stream_max_age
        self.batch = batch
        self.reconnect = reconnect or ReconnectPolicy(initial_delay=0.1, max_delay=2.0)
        self._deliver = deliver
        self._retrying = retrying
        self._wanted = wanted
        self._spawn = spawn
        self._stats = stats
        self._on_loss = on_loss
        # A target not written to for as long as a stream keeps entries is numbered afresh:
        # its record may have forgotten this sender by then (see .ledger).
        self._counters = SendCounters(idle_after=stream_max_age)
        # Numbers are per process start: a process id given again after a restart (numbered
        # from 1 again) is a new sender, not a run of repeats.
        self.sender = f"{process_id}.{uuid.uuid4().hex[:8]}"
        # One add at a time per target, from taking its number to Redis having it: the
        # stream holds each sender's numbers in order. Bounded: a lock lives while used.
        self._adding: dict[str, list[Any]] = {}
        self._readers: dict[str, _Reader] = {}
        self._acking: set[asyncio.Task[None]] = set()  # at most one per reader

    # -- sending --------------------------------------------------------------------------------

    async def add(self, message: BusMessage, origin: str | None) -> None:
        """Add ``message`` to its target's stream; returns once Redis has it.

        Raises:
            BusUnavailableError: Redis did not take it within ``publish_timeout``.
        """
        target = message.target
        assert target is not None
        payload = self.serializer.serialize(message)
        gate = self._adding.get(target)
        if gate is None:
            gate = self._adding[target] = [asyncio.Lock(), 0]
        gate[1] += 1
        try:
            async with gate[0]:
                await self._add(message, target, payload, origin)
        finally:
            gate[1] -= 1
            if not gate[1]:
                del self._adding[target]

    async def _add(
        self, message: BusMessage, target: str, payload: bytes, origin: str | None
    ) -> None:
        link_seq = message.link_seq
        if link_seq is None:
            # A send that fails keeps its number: it may have reached Redis before the
            # connection broke, and a number used twice would drop the second message.
            sender, seq = self.sender, self._counters.next(target, time.monotonic())
        else:  # from a resumable link: its identity in its session, whichever instance sends
            sender, seq = SESSION_SENDER + link_seq[0], link_seq[1]
        data = encode_envelope(sender, seq, origin, payload, message.trace_context)
        stream = self.keys.stream(target)
        age_ms = int(self.stream_max_age * 1000)

        async def attempt() -> None:
            pipe = self.redis.pipeline(transaction=False)
            pipe.xadd(stream, {"d": data}, maxlen=self.stream_max_len, approximate=True)
            pipe.xtrim(stream, minid=str(int(time.time() * 1000) - age_ms), approximate=True)
            pipe.pexpire(stream, age_ms)
            pipe.publish(self.keys.target(target), b"")  # the reader's wake-up call
            await pipe.execute()

        await self._retrying(attempt, message)

    # -- reading --------------------------------------------------------------------------------

    def set_targets(self, targets: set[str]) -> None:
        """The targets this process's subscribers want by name now: read the streams of the
        new ones; the readers of the others end."""
        for target in targets - self._readers.keys():
            self.wake(target)
        for target in self._readers.keys() - targets:
            reader = self._readers[target]
            if reader.task is None:
                del self._readers[target]

    def wake(self, target: str) -> None:
        """Read ``target``'s stream now (a notice came, or a subscriber started wanting it)."""
        if not self.active or not self._wanted(target):
            return
        reader = self._readers.get(target)
        if reader is None:
            reader = self._readers[target] = _Reader(target, DeliveryLedger())
        reader.again = True
        if reader.task is None:
            reader.task = self._spawn(self._run(reader), f"stream:{target}")

    def wake_all(self) -> None:
        """After a reconnect: notices sent meanwhile were lost, so read every wanted stream."""
        for reader in list(self._readers.values()):
            reader.prepared = False  # Redis may have restarted: its groups may be new
            self.wake(reader.target)

    def stop(self) -> None:
        """The bus stopped (its tasks are cancelled): a start begins afresh."""
        self.active = False
        self._readers.clear()
        self._adding.clear()
        self._acking.clear()

    async def _run(self, reader: _Reader) -> None:
        try:
            while reader.again and self.active and self._wanted(reader.target):
                reader.again = False
                try:
                    if not reader.prepared:
                        await self._prepare(reader)
                        # Ours, read before and not acknowledged (an acknowledgement that
                        # failed), and what was claimed from a previous host: first.
                        await self._drain(reader, "0")
                    await self._drain(reader, ">")
                    reader.attempt = 0
                except (BusClosedError, _Unwanted):
                    return
                except redis_errors() as exc:
                    # Redis is away, refused (out of memory...), or came back without the
                    # group: set up again, then read.
                    reader.prepared = False
                    reader.again = True
                    reader.attempt += 1
                    delay = self.reconnect.delay(reader.attempt, 0.5)
                    logger.warning(
                        "redis bus %s: reading the stream of %s failed (%s); again in %.2fs",
                        self.process_id,
                        reader.target,
                        exc,
                        delay,
                    )
                    await asyncio.sleep(delay)
        finally:
            if self._readers.get(reader.target) is reader:
                reader.task = None
                if not self._wanted(reader.target):
                    del self._readers[reader.target]

    async def _prepare(self, reader: _Reader) -> None:
        redis = self.redis
        stream = self.keys.stream(reader.target)
        try:
            await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except redis_errors() as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        # A stream made here for a worker nobody writes to goes, as an idle one does.
        await redis.pexpire(stream, int(self.stream_max_age * 1000), nx=True)
        reader.ledger.load(await self._read_record(reader))
        # Worker names are unique: another reader of this stream is a previous host.
        summary = await redis.xpending(stream, GROUP)
        for consumer in summary.get("consumers") or ():
            name = consumer["name"]
            name = name.decode() if isinstance(name, bytes) else name
            if name == self.process_id:
                continue
            while True:
                pending = await redis.xpending_range(
                    stream, GROUP, min="-", max="+", count=self.batch, consumername=name
                )
                if not pending:
                    break
                ids = [entry["message_id"] for entry in pending]
                await redis.xclaim(stream, GROUP, self.process_id, 0, ids, justid=True)
            await redis.xgroup_delconsumer(stream, GROUP, name)
            logger.info(
                "redis bus %s: took over the stream of %s from %s",
                self.process_id,
                reader.target,
                name,
            )
        reader.prepared = True

    async def _read_record(self, reader: _Reader) -> dict[str, int]:
        """The target's record in Redis, less the senders it no longer needs (dropped)."""
        key = self.keys.delivered(reader.target)
        keep_ms = int(self.stream_max_age * 2000)
        record, stale = parse_record(
            await self.redis.hgetall(key), int(time.time() * 1000), keep_ms
        )
        if stale:
            await self.redis.hdel(key, *stale)
        reader.prune_at = time.monotonic() + self.stream_max_age / 2
        return record

    async def _drain(self, reader: _Reader, start: str) -> None:
        redis = self.redis
        target = reader.target
        stream = self.keys.stream(target)
        while self.active:
            if not self._wanted(target):
                raise _Unwanted
            answer = await redis.xreadgroup(
                GROUP, self.process_id, {stream: start}, count=self.batch
            )
            entries = answer[0][1] if answer else []
            if not entries:
                return
            for entry_id, fields in entries:
                if entry_id in reader.in_flight:
                    continue  # read again from the pending entries: still being handled
                if not fields:  # a claimed entry that was trimmed meanwhile has none
                    self._settle(reader, entry_id, None, 0)
                    continue
                await self._take(reader, entry_id, fields)
            if start != ">":  # reading the pending entries: on past these
                start = entries[-1][0]

    async def _take(self, reader: _Reader, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        """Hand one entry to the local bus; it is acknowledged once handled.

        Raises:
            _Unwanted: nobody here wants the target any more: the entry stays pending.
        """
        stats = self._stats
        try:
            envelope = decode_envelope(fields.get(b"d", b""))
        except MessageDecodeError as exc:
            self._refuse(f"{exc} in the stream of {reader.target}")
            self._settle(reader, entry_id, None, 0)
            return
        sender, seq = envelope.process, envelope.seq
        verdict = reader.ledger.check(sender, seq)
        if verdict.duplicate:
            stats.duplicates += 1
            self._settle(reader, entry_id, sender, seq)  # in case the record lags
            return
        if verdict.lost:
            stats.lost += verdict.lost
            logger.error(
                "redis bus %s: %d message(s) from process %s to %s were lost unread"
                " (trimmed from the stream, or Redis lost its data)",
                self.process_id,
                verdict.lost,
                sender,
                reader.target,
            )
            self._on_loss(DataLoss("gap", reader.target, sender, verdict.lost))
        try:
            message = self.serializer.deserialize(envelope.payload)
        except MessageDecodeError as exc:
            self._refuse(f"{exc} (from process {sender})")
            reader.ledger.delivered(sender, seq)
            self._settle(reader, entry_id, sender, seq)
            return
        mark_origin(message, envelope.origin or f"redis:{sender}")
        if envelope.trace_context is not None:
            set_trace_context(message, envelope.trace_context)
        # Acknowledged when every local subscriber that took it has handled it: what a
        # killed process had queued is still pending, for the next host to claim.
        receipt = Receipt(
            lambda: self._settle(reader, entry_id, sender, seq),
            (reader.target, entry_id, sender, seq),
        )
        attach_receipt(message, receipt)
        reader.in_flight.add(entry_id)
        # Waits for room: a slow worker holds back its own stream only.
        if not await self._deliver(message):
            reader.in_flight.discard(entry_id)
            raise _Unwanted
        stats.received += 1
        reader.ledger.delivered(sender, seq)
        receipt.release()

    # -- acknowledging --------------------------------------------------------------------------

    def _settle(self, reader: _Reader, entry_id: bytes, sender: str | None, seq: int) -> None:
        """``entry_id`` is done with: acknowledge it, with the sender's number, soon."""
        reader.in_flight.discard(entry_id)
        reader.acks.append(entry_id)
        if sender is not None and seq > reader.record.get(sender, 0):
            reader.record[sender] = seq
        if reader.acking is None and self.active:
            task = self._spawn(self._acknowledge(reader), f"ack:{reader.target}")
            reader.acking = task
            self._acking.add(task)
            task.add_done_callback(self._acking.discard)

    async def _acknowledge(self, reader: _Reader) -> None:
        """Acknowledge what was handled, one transaction at a time: what is handled while one
        is on its way goes in the next. Kept and tried again while Redis is away."""
        attempt = 0
        try:
            while reader.acks and self.active:
                try:
                    await self._write_acks(reader)
                    attempt = 0
                    if time.monotonic() >= reader.prune_at:  # a record that grows forever
                        await self._read_record(reader)
                except redis_errors() as exc:
                    attempt += 1
                    delay = self.reconnect.delay(attempt, 0.5)
                    logger.warning(
                        "redis bus %s: acknowledging %d message(s) to %s failed (%s);"
                        " again in %.2fs",
                        self.process_id,
                        len(reader.acks),
                        reader.target,
                        exc,
                        delay,
                    )
                    await asyncio.sleep(delay)
        finally:
            reader.acking = None

    async def _write_acks(self, reader: _Reader) -> None:
        acks, record = reader.acks, reader.record
        reader.acks, reader.record = [], {}
        stream = self.keys.stream(reader.target)
        delivered = self.keys.delivered(reader.target)
        try:
            pipe = self.redis.pipeline(transaction=True)
            pipe.xack(stream, GROUP, *acks)
            if record:
                now_ms = int(time.time() * 1000)
                pipe.hset(
                    delivered, mapping={s: record_value(n, now_ms) for s, n in record.items()}
                )
                pipe.pexpire(delivered, int(self.stream_max_age * 2000))
            await pipe.execute()
        except BaseException:
            # Not written: back in front of what was handled meanwhile.
            reader.acks[:0] = acks
            for sender, seq in record.items():
                if seq > reader.record.get(sender, 0):
                    reader.record[sender] = seq
            raise

    async def acknowledge_all(self, timeout: float) -> None:
        """On a clean stop, once the workers have ended: write what they handled and is not
        acknowledged yet, within ``timeout`` (what is not written goes to the next host
        again)."""
        tasks = [task for task in self._acking if not task.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    def _refuse(self, detail: str) -> None:
        self._stats.rejected += 1
        logger.warning("redis bus %s: refused a message from Redis: %s", self.process_id, detail)
