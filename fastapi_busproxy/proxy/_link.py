"""One WebSocket connection between two buses: the I/O around a :class:`LinkProtocol`.

The decisions are the protocol's (:mod:`.protocol`: limits, framing, what is let in, batching,
deadlines, the close code); this module moves bytes and wakes tasks:

- :meth:`Link.run` reads, in the caller's task (the endpoint's, on a server), feeds what the
  socket gives to the protocol and delivers what it lets in to the bus;
- the proxy's own bus delivery task writes what it forwards (:meth:`Link.send_batch`): it takes
  what else is queued in its mailbox and sends it in one WebSocket message, so the mailbox is
  the outbox while the link is up;
- a writer task, made only while there is something else to write (control frames: pongs,
  acknowledgements, pings; the outbox's messages: held while disconnected, or waiting for the
  peer's send window), ends when it has written it;
- a timer (not a task: a server holds one per connection) calls the protocol's ``tick`` with
  the time.

When the protocol knows a reason to close, or a write fails, :meth:`Link.run` stops and
returns why the link closed.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from ..closecodes import CloseCode
from ..exceptions import BusError, BusUnavailableError
from ..messages import BusMessage
from ..serializers import MessageSerializer
from ._outbox import Outbox
from ._transport import PeerClosed, Transport
from .forwarding import ForwardingRules
from .protocol import ACK_DELAY, CloseInfo, LinkConfig, LinkProtocol, LinkStats, SessionOutcome
from .resume import Persist, SessionState

logger = logging.getLogger("fastapi_busproxy.proxy")

__all__ = ["CloseInfo", "Link", "LinkConfig", "LinkStats"]


class _ProtocolClosed(Exception):
    """The protocol decided to close: a pump ends (the reason is in its close_info)."""


class Link:
    # A server holds one per connection: slots instead of an instance dict.
    __slots__ = (
        "_clock",
        "_deliver",
        "_deliverer",
        "_inbound",
        "_interrupted",
        "_offer",
        "_on_drained",
        "_on_outcome",
        "_persist",
        "_reader",
        "_running",
        "_send_error",
        "_sender",
        "_timer",
        "_write_lock",
        "_wrote_direct",
        "config",
        "name",
        "outbox",
        "protocol",
        "stats",
        "transport",
    )

    def __init__(
        self,
        *,
        name: str,
        transport: Transport,
        rules: ForwardingRules,
        serializer: MessageSerializer,
        framed: bool,
        deliver: Callable[[BusMessage], Awaitable[None]],
        offer: Callable[[BusMessage], bool] | None = None,
        outbox: Outbox,
        stats: LinkStats,
        config: LinkConfig,
        session: SessionState | None = None,
        on_outcome: Callable[[SessionOutcome], Awaitable[None]] | None = None,
        on_drained: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        client: bool = False,
        persist: Persist | None = None,
    ) -> None:
        self.name = name
        # Keeps a resumable session's numbered messages elsewhere too (a durable bus's
        # Redis), before any of them is written: another instance can take the session over.
        self._persist = persist
        self.transport = transport
        self.outbox = outbox
        self.stats = stats
        self.config = config
        self._clock = clock
        self.protocol = LinkProtocol(
            name=name,
            config=config,
            stats=stats,
            serializer=serializer,
            rules=rules,
            framed=framed,
            now=clock(),
            session=session,
            client=client,
        )
        self._on_outcome = on_outcome
        self._on_drained = on_drained
        self._deliver = deliver
        self._offer = offer
        self._write_lock = asyncio.Lock()
        self._wrote_direct = False  # a direct write happened in this turn of the event loop
        self._running = False
        self._reader: asyncio.Task[Any] | None = None  # the task in run(): it reads
        # The writer task, while there is a control frame or the outbox to write.
        self._sender: asyncio.Task[None] | None = None
        self._send_error: BaseException | None = None  # a write failed: why
        self._interrupted = False  # run()'s task was cancelled by the link itself, to stop
        # A resumable link's messages let in and not yet delivered, and the task delivering
        # them (made when there are some).
        self._inbound: deque[BusMessage] | None = None
        self._deliverer: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    @property
    def framed(self) -> bool:
        return self.protocol.framed

    @property
    def closing(self) -> bool:
        return self.protocol.closing

    # -- control ------------------------------------------------------------------------------

    def send_now(self, message: BusMessage) -> None:
        """Queue ``message`` ahead of the outbox (readiness announcements)."""
        self.protocol.announce(message)
        self.kick()

    def kick(self) -> None:
        """There is something to write (a control frame, the outbox): make sure a writer
        runs. It ends once it has written what there is."""
        if self._sender is None and self._running and not self.protocol.closing:
            sender = asyncio.get_running_loop().create_task(
                self._write_queued(), name=f"{self.name}:send"
            )
            sender.add_done_callback(self._sender_ended)
            self._sender = sender

    async def close(self, code: int, reason: str) -> None:
        """Close the connection with ``code``; the pumps then end and :meth:`run` returns."""
        self.protocol.close(code, reason)
        await self._close_transport(code, reason)

    async def _close_transport(self, code: int, reason: str) -> None:
        # A peer that does not read cannot take the close frame either: the ASGI server's
        # closing handshake would then wait for its own timeouts (10 s and more with
        # uvicorn). Give it send_timeout, like any write; the server tears the TCP
        # connection down on its own afterwards.
        try:
            await asyncio.wait_for(self.transport.close(code, reason), self.config.send_timeout)
        except asyncio.TimeoutError:
            logger.info(
                "link %s: closing handshake unfinished after %.1fs; left to the server",
                self.name,
                self.config.send_timeout,
            )

    # -- run ----------------------------------------------------------------------------------

    async def run(self) -> CloseInfo:
        """Move messages until the connection closes; return why it closed.

        The caller's task reads (the receive loop runs in it); see the module's docstring
        for who writes. Cancelling closes the connection with 1001 (going away).
        """
        loop = asyncio.get_running_loop()
        protocol = self.protocol
        current = asyncio.current_task()
        assert current is not None
        self._reader = current
        self._running = True
        self.outbox.wake = self.kick
        self.kick()  # what is queued already: announcements, the welcome, held messages
        self._timer = loop.call_later(protocol.tick_interval, self._tick)
        ended: BaseException | None = None
        stopped = False
        try:
            await self._receive_pump()
        except asyncio.CancelledError:
            if not self._interrupted or _still_cancelled(current):
                stopped = True
                protocol.close(CloseCode.GOING_AWAY, "proxy stopped")
                raise
        except Exception as exc:
            ended = exc
        finally:
            self._reader = None  # before any await here: no interrupt lands in this block
            self._running = False
            if self.outbox.wake == self.kick:
                self.outbox.wake = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            sender = self._sender
            if sender is not None:
                self._sender = None
                sender.remove_done_callback(self._sender_ended)
                sender.cancel()
                await asyncio.wait((sender,))
            deliverer = self._deliverer
            if deliverer is not None:
                # What was let in is delivered (within send_timeout), unless we are stopped:
                # a resumable peer sends again what was not.
                if not stopped:
                    await asyncio.wait((deliverer,), timeout=self.config.send_timeout)
                deliverer.cancel()
                await asyncio.wait((deliverer,))
            if protocol.close_info is None:
                self._record_outcome(ended, self._send_error)
            info = protocol.close_info
            assert info is not None
            if info.by_us:
                await self._close_transport(info.code, info.reason)
        return info

    def _record_outcome(self, received: BaseException | None, sent: BaseException | None) -> None:
        protocol = self.protocol
        for exc in (received, sent):
            if isinstance(exc, PeerClosed):
                protocol.peer_closed(exc.code, exc.reason)
                return
        for exc in (received, sent):
            if exc is not None and not isinstance(exc, _ProtocolClosed):
                logger.error("link %s: internal error, closing with 1011", self.name, exc_info=exc)
                protocol.close(CloseCode.INTERNAL_ERROR, "internal error", error=exc)
                return
        protocol.close(CloseCode.INTERNAL_ERROR, "link ended unexpectedly")

    def _tick(self) -> None:
        """The protocol's timer: check its deadlines; stop the link if it decided to close."""
        self._timer = None
        protocol = self.protocol
        protocol.tick(self._clock())
        if protocol.closing:
            self._abort()
            return
        if protocol.next_control() is not None:
            self.kick()  # a ping to write
        self._timer = asyncio.get_running_loop().call_later(protocol.tick_interval, self._tick)

    def _sender_ended(self, sender: asyncio.Task[None]) -> None:
        if self._sender is sender:
            self._sender = None
        if not sender.cancelled() and sender.exception() is not None:
            self._write_failed(sender.exception())

    def _write_failed(self, exc: BaseException | None) -> None:
        # A write failed (the peer closed, the protocol decided to close, or a fault): stop
        # reading too; run() records why.
        if self._send_error is None:
            self._send_error = exc
        self._interrupt()

    def _abort(self) -> None:
        """End :meth:`run` from outside its loops (the protocol holds the reason)."""
        if self._sender is not None:
            self._sender.cancel()
        self._interrupt()

    def _interrupt(self) -> None:
        reader = self._reader
        if reader is not None and not self._interrupted:
            self._interrupted = True
            reader.cancel()

    # -- receive ------------------------------------------------------------------------------

    async def _receive_pump(self) -> None:
        receive = self.transport.receive
        protocol = self.protocol
        clock = self._clock
        outbox = self.outbox
        loop = asyncio.get_running_loop()
        while True:
            data = await receive()
            messages = protocol.receive_data(data, clock())
            # A link becomes resumable when the server upgrades it in band.
            resumable = protocol.session is not None
            if resumable:
                # Delivered by a task of the link's, so that this loop reads on (the peer's
                # acknowledgements) while the bus pushes back: the peer sends no more than
                # our receive window unacknowledged, so what waits here is bounded by it.
                if messages:
                    self._take_in(messages)
            else:
                for message in messages:
                    await self._deliver_one(message)
            if protocol.has_answers:
                # Our jobs the peer refused: their requesters hear it now (rare; unsequenced).
                for answer in protocol.take_answers():
                    await self._deliver_one(answer)
            if protocol.closing:
                raise _ProtocolClosed
            outcome = protocol.outcome
            if outcome is not None:
                protocol.outcome = None
                if self._on_outcome is not None:
                    await self._on_outcome(outcome)
            if resumable:
                if protocol.ack_after_delivery():  # refused messages count as delivered
                    loop.call_later(ACK_DELAY, self._ack_timer)
                on_drained = self._on_drained
                if on_drained is not None and not outbox and protocol.drained:
                    on_drained()
                if protocol.next_control() is not None or (outbox and protocol.can_send_data):
                    self.kick()  # an acknowledgement to write, or room in the send window
            elif protocol.next_control() is not None or (outbox and protocol.can_send_data):
                # A pong to write, or what waited for the peer's first word (a client that
                # may be upgraded in band holds its data until the server speaks).
                self.kick()

    async def _deliver_one(self, message: BusMessage) -> None:
        try:
            await self._deliver(message)
        except BusError as exc:
            self.stats.dropped += 1
            logger.warning(
                "link %s: could not deliver %s: %s", self.name, type(message).__name__, exc
            )

    def _take_in(self, messages: list[BusMessage]) -> None:
        """A resumable link's messages, in order: delivered now while the bus takes them
        without waiting (and nothing is queued before them), the rest queued for
        :meth:`_deliver_queued`."""
        offer = self._offer
        if offer is not None and self._deliverer is None and not self._inbound:
            protocol = self.protocol
            done = 0
            for message in messages:
                try:
                    if not offer(message):
                        break
                except BusError:
                    break  # send() will say what went wrong
                protocol.delivered_one()
                done += 1
            if done == len(messages):
                return
            messages = messages[done:]
        self._queue_inbound(messages)

    def _queue_inbound(self, messages: list[BusMessage]) -> None:
        inbound = self._inbound
        if inbound is None:
            inbound = self._inbound = deque()
        inbound.extend(messages)
        if self._deliverer is None:
            self._deliverer = asyncio.get_running_loop().create_task(
                self._deliver_queued(inbound), name=f"{self.name}:deliver"
            )

    async def _deliver_queued(self, inbound: deque[BusMessage]) -> None:
        """Deliver what a resumable link let in, in order; acknowledge as it goes. Runs
        while there is something to deliver."""
        protocol = self.protocol
        loop = asyncio.get_running_loop()
        try:
            while inbound:
                await self._deliver_one(inbound.popleft())
                protocol.delivered_one()
                if protocol.ack_after_delivery():
                    loop.call_later(ACK_DELAY, self._ack_timer)
                if protocol.next_control() is not None:
                    self.kick()  # an acknowledgement to write
        finally:
            self._deliverer = None
            if not inbound:
                self._inbound = None  # an idle link holds no deque block

    def _ack_timer(self) -> None:
        protocol = self.protocol
        protocol.ack_timer()
        if self._running and protocol.next_control() is not None:
            self.kick()

    # -- send ---------------------------------------------------------------------------------

    async def _write_queued(self) -> None:
        """The writer task: control frames first, then the outbox as the protocol packs it;
        it ends when nothing is left that may go now."""
        send = self.transport.send
        outbox = self.outbox
        protocol = self.protocol
        while True:
            control = protocol.next_control()
            if control is not None:
                await self._timed_send(send, control)
                protocol.control_written()
                continue
            expired = outbox.expire()
            if expired:
                self.stats.dropped += expired
                logger.warning(
                    "link %s: dropped %d messages older than %ss",
                    self.name,
                    expired,
                    outbox.max_age,
                )
            if not outbox or not protocol.can_send_data:
                # Nothing more now. In the same step as the check: a kick() from here on
                # makes a new writer.
                self._sender = None
                return
            packed = protocol.pack(outbox.peek(protocol.batch_limit))
            resumable = protocol.session is not None
            if resumable:
                # Numbered and in the replay buffer now: if the write fails, the next
                # connection of the session sends them again.
                outbox.pop(packed.taken)
            if packed.data is not None:
                await self._timed_send(send, packed.data)
                protocol.written(packed)
            if not resumable:
                outbox.pop(packed.taken)

    @property
    def can_send_batch(self) -> bool:
        """:meth:`send_batch` may write now: the link is up, nothing waits in the outbox
        (order), and the peer's send window has room."""
        protocol = self.protocol
        return self._running and not self.outbox and protocol.can_send_data and not protocol.closing

    async def send_batch(self, messages: list[BusMessage]) -> list[BusMessage]:
        """Write ``messages``, in order, from the caller's task (a proxy's bus delivery
        task: it takes what else is queued in its mailbox, so that a burst goes out in one
        WebSocket message); the control frames waiting go first.

        Returns the messages that must wait, in order: the send window filled, or the
        connection failed (resumable: those not yet numbered; otherwise also those whose
        write failed). The caller queues or holds them.
        """
        protocol = self.protocol
        send = self.transport.send
        async with self._write_lock:
            try:
                while messages:
                    control = protocol.next_control()
                    if control is not None:
                        await self._send_locked(send, control)
                        protocol.control_written()
                        continue
                    if not self.can_send_batch:
                        break
                    packed = protocol.pack(messages)
                    if packed.data is None:  # none of them could be encoded (counted)
                        messages = messages[packed.taken :]
                    elif protocol.session is not None:
                        # Numbered and in the replay buffer: if the write fails, the next
                        # connection of the session sends them again.
                        messages = messages[packed.taken :]
                        await self._send_locked(send, packed.data)
                        protocol.written(packed)
                    else:
                        await self._send_locked(send, packed.data)
                        protocol.written(packed)
                        messages = messages[packed.taken :]  # a failed write leaves them
            except Exception as exc:  # PeerClosed, or a fault: run() says which
                self._write_failed(exc)
        return messages

    async def send_direct(self, message: BusMessage) -> bool:
        """Write ``message`` now if the link is idle; ``False`` when it must be queued.

        The fast path of a message sent while the proxy's mailbox is empty: written from the
        sender's task, saving the hand-over to the proxy's delivery task (a turn of the event
        loop). Idle means nothing queued or being written, so order is kept, and no direct
        write yet in this turn of the event loop: the rest of a burst queues behind the first
        message and the delivery task sends it in one batch.
        """
        protocol = self.protocol
        if (
            not self._running
            or self._wrote_direct
            or self._write_lock.locked()
            or self.outbox
            or protocol.next_control() is not None
            or protocol.closing
            or not protocol.can_send_data
        ):
            return False
        packed = protocol.pack((message,))
        if packed.data is None:
            return True  # it cannot be encoded: counted and logged, not queued
        self._wrote_direct = True
        asyncio.get_running_loop().call_soon(self._next_turn)
        try:
            await self._timed_send(self.transport.send, packed.data)
        except PeerClosed:
            # Resumable: in the replay buffer, sent again on the session's next connection.
            # Otherwise the caller queues it: a client's outbox keeps it for the next link.
            return protocol.session is not None
        except BusUnavailableError as exc:
            # What the session sends could not be kept (Redis away): the link ends, and the
            # message, numbered, goes again (kept first) on the session's next connection.
            self._write_failed(exc)
            return True
        protocol.written(packed)
        return True

    def _next_turn(self) -> None:
        self._wrote_direct = False

    async def _timed_send(self, send: Callable[[bytes], Awaitable[None]], data: bytes) -> None:
        # One write at a time, in the order asked (asyncio.Lock is FIFO).
        async with self._write_lock:
            await self._send_locked(send, data)

    async def _send_locked(self, send: Callable[[bytes], Awaitable[None]], data: bytes) -> None:
        session = self.protocol.session
        if session is not None and session.needs_persisting:
            # Before any byte of a numbered message goes out: kept, then let go (receipts).
            upto = session.sent
            if self._persist is not None:
                entries = session.unpersisted()
                if entries:
                    upto = entries[-1][0]
                    await self._persist(session, entries, session.receipts_upto(upto))
            session.persisted_upto(upto)
        # The protocol's tick closes the link if one write takes longer than send_timeout.
        self.protocol.write_started(self._clock())
        try:
            await send(data)
        finally:
            self.protocol.write_finished()


def _still_cancelled(task: asyncio.Task[Any]) -> bool:
    """After the link cancelled ``task`` itself: whether someone else cancelled it too (3.11+
    counts cancellations; on 3.10 the link's own is the only one it can tell)."""
    if sys.version_info >= (3, 11):
        return task.uncancel() > 0
    return False
