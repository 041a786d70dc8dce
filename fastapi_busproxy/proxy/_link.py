"""One WebSocket connection between two buses: a receive pump, a send pump and a watchdog.

The pumps move bytes; the decisions are elsewhere (``forwarding`` says what is let in,
``framing`` how bytes are laid out). When either pump ends, the other is cancelled and
:meth:`Link.run` returns why the link closed. The watchdog is a timer, not a task (a server
holds one per connection): when it finds the peer too slow or silent, it cancels the pumps.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ..closecodes import CloseCode
from ..exceptions import BusError, MessageEncodeError
from ..messages import BusMessage, mark_origin
from ..serializers import MessageSerializer
from ._outbox import Outbox
from ._transport import PeerClosed, Transport
from .forwarding import ForwardingRules
from .framing import (
    FrameKind,
    FramingError,
    decode_frame,
    encode_batch,
    encode_message,
    encode_ping,
    encode_pong,
)

logger = logging.getLogger("fastapi_busproxy.proxy")

__all__ = ["CloseInfo", "Link", "LinkConfig", "LinkStats"]


@dataclass
class LinkStats:
    """Counters of a proxy, over every connection it has had.

    Attributes:
        messages_in / messages_out: bus messages received and accepted / sent.
        bytes_in / bytes_out: WebSocket payload bytes received / sent.
        frames_out: WebSocket messages sent (fewer than ``messages_out`` when batching).
        rejected: inbound messages or frames refused, by any reason; ``rejected_by_reason``
            splits them (``malformed``, ``text_frame``, ``framing``, ``forged_source``,
            ``wrong_target``, ``foreign_registry``, ``local_only``).
        oversized: connections closed because a message exceeded the size limit.
        too_slow: connections closed because the peer did not take what was sent to it within
            ``send_timeout`` (close code 4000).
        dropped: outbound messages lost: outbox overflow or expiry while disconnected, encode
            errors, or left in the queue when the link ended for good.
        reconnects: connections opened after the first one (client).
        last_rtt: the last keepalive round-trip time in seconds, if measured.
    """

    messages_in: int = 0
    messages_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    frames_out: int = 0
    rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    oversized: int = 0
    too_slow: int = 0
    dropped: int = 0
    reconnects: int = 0
    last_rtt: float | None = None


@dataclass(frozen=True)
class LinkConfig:
    max_message_size: int = 1_048_576
    send_timeout: float = 10.0
    max_bad_frames: int = 10
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    app_keepalive: bool = False  # send our own pings (server side, framed links)
    batching: bool = True
    max_batch_messages: int = 64
    max_batch_bytes: int = 262_144


@dataclass(frozen=True)
class CloseInfo:
    """Why a link closed: the close code and reason, and whether this side closed it."""

    code: int
    reason: str
    by_us: bool
    error: BaseException | None = None

    @property
    def normal(self) -> bool:
        return self.code in _NORMAL_CODES


_MAX_PENDING_PONGS = 16

# Closes that are part of normal operation: logged at INFO, not as warnings.
_NORMAL_CODES = frozenset(
    (CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY, CloseCode.SERVICE_RESTART, 1005)
)


class _CloseLink(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class Link:
    def __init__(
        self,
        *,
        name: str,
        transport: Transport,
        rules: ForwardingRules,
        serializer: MessageSerializer,
        framed: bool,
        deliver: Callable[[BusMessage], Awaitable[None]],
        outbox: Outbox,
        stats: LinkStats,
        config: LinkConfig,
    ) -> None:
        self.name = name
        self.transport = transport
        self.rules = rules
        self.serializer = serializer
        self.framed = framed
        self.outbox = outbox
        self.stats = stats
        self.config = config
        self._deliver = deliver
        # Frames that go ahead of the outbox: announcements, pongs, pings. Pongs are capped
        # (see _MAX_PENDING_PONGS) so a peer flooding pings cannot grow this.
        self._control: deque[bytes] | None = None  # made on first use
        self._pending_pongs = 0
        self._close_info: CloseInfo | None = None
        self._bad_in_a_row = 0
        self._logged_refusals: set[str] = set()
        self._send_started: float | None = None
        self._write_lock = asyncio.Lock()
        self._wrote_direct = False  # a direct write happened in this turn of the event loop
        self._running = False
        self._last_received = time.monotonic()
        self._pumps: list[asyncio.Task[None]] = []
        self._watchdog: _Watchdog | None = None

    @property
    def closing(self) -> bool:
        return self._close_info is not None

    # -- control ------------------------------------------------------------------------------

    def send_now(self, message: BusMessage) -> None:
        """Queue ``message`` ahead of the outbox (readiness announcements)."""
        payload = self.serializer.serialize(message)
        self._push_control(encode_message(payload) if self.framed else payload)

    def _push_control(self, data: bytes) -> None:
        if self._control is None:
            self._control = deque()
        self._control.append(data)
        self.outbox.notify()

    async def close(self, code: int, reason: str) -> None:
        """Close the connection with ``code``; the pumps then end and :meth:`run` returns."""
        if self._close_info is None:
            self._close_info = CloseInfo(code, reason, by_us=True)
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

        Cancelling closes the connection with 1001 (going away).
        """
        loop = asyncio.get_running_loop()
        self._running = True
        tasks = [
            loop.create_task(self._receive_pump(), name=f"{self.name}:receive"),
            loop.create_task(self._send_pump(), name=f"{self.name}:send"),
        ]
        self._pumps = tasks
        self._watchdog = _Watchdog(self, loop)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            if self._close_info is None:
                self._close_info = CloseInfo(CloseCode.GOING_AWAY, "proxy stopped", by_us=True)
            raise
        finally:
            self._running = False
            if self._watchdog is not None:
                self._watchdog.stop()
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
            if self._close_info is None:
                self._close_info = self._outcome(tasks)
            if self._close_info.by_us:
                await self._close_transport(self._close_info.code, self._close_info.reason)
        return self._close_info

    def _outcome(self, tasks: list[asyncio.Task[None]]) -> CloseInfo:
        for task in tasks:
            if not task.done() or task.cancelled():
                continue
            exc = task.exception()
            if isinstance(exc, PeerClosed):
                return CloseInfo(exc.code, exc.reason, by_us=False)
            if isinstance(exc, _CloseLink):
                return CloseInfo(exc.code, exc.reason, by_us=True)
            if exc is not None:
                logger.error("link %s: internal error, closing with 1011", self.name, exc_info=exc)
                return CloseInfo(CloseCode.INTERNAL_ERROR, "internal error", by_us=True, error=exc)
        return CloseInfo(CloseCode.INTERNAL_ERROR, "link ended unexpectedly", by_us=True)

    # -- receive ------------------------------------------------------------------------------

    async def _receive_pump(self) -> None:
        receive = self.transport.receive
        stats = self.stats
        max_size = self.config.max_message_size
        while True:
            data = await receive()
            self._last_received = time.monotonic()
            if isinstance(data, str):
                self._refuse("text_frame", "text WebSocket message (send binary)", malformed=True)
                continue
            size = len(data)
            stats.bytes_in += size
            if size > max_size:
                stats.oversized += 1
                logger.warning(
                    "link %s: %d-byte message exceeds the %d-byte limit; closing with 1009",
                    self.name,
                    size,
                    max_size,
                )
                raise _CloseLink(CloseCode.MESSAGE_TOO_BIG, "message too big")
            if not self.framed:
                await self._accept(data)
                continue
            try:
                frame = decode_frame(data)
            except FramingError as exc:
                self._refuse("framing", str(exc), malformed=True)
                continue
            if frame.kind is FrameKind.PING:
                if self._pending_pongs < _MAX_PENDING_PONGS:
                    self._pending_pongs += 1
                    self._push_control(encode_pong(frame.token))
            elif frame.kind is FrameKind.PONG:
                stats.last_rtt = max(0.0, (time.monotonic_ns() - frame.token) / 1e9)
            else:
                for payload in frame.payloads:
                    await self._accept(payload)

    async def _accept(self, payload: bytes | memoryview) -> None:
        try:
            message: object = self.serializer.deserialize(payload)  # type: ignore[arg-type]
        except Exception as exc:  # a custom serializer may raise anything on bad input
            self._refuse("malformed", str(exc), malformed=True)
            return
        if not isinstance(message, BusMessage):  # a custom serializer's "nothing"
            self._refuse("malformed", f"decoded to {type(message).__name__}", malformed=True)
            return
        refusal = self.rules.check_inbound(message)
        if refusal is not None:
            self._refuse(
                refusal.value,
                f"{type(message).__name__} from {message.source!r} to {message.target!r}",
                malformed=False,
            )
            return
        self._bad_in_a_row = 0
        self.stats.messages_in += 1
        mark_origin(message, self.name)
        try:
            await self._deliver(message)
        except BusError as exc:
            self.stats.dropped += 1
            logger.warning(
                "link %s: could not deliver %s: %s", self.name, type(message).__name__, exc
            )

    def _refuse(self, reason: str, detail: str, *, malformed: bool) -> None:
        stats = self.stats
        stats.rejected += 1
        stats.rejected_by_reason[reason] = stats.rejected_by_reason.get(reason, 0) + 1
        if reason not in self._logged_refusals:
            self._logged_refusals.add(reason)
            logger.warning(
                "link %s: refused inbound data (%s): %s; further refusals of this kind are"
                " logged at DEBUG",
                self.name,
                reason,
                detail,
            )
        else:
            logger.debug("link %s: refused inbound data (%s): %s", self.name, reason, detail)
        self._bad_in_a_row += 1
        if self._bad_in_a_row >= self.config.max_bad_frames:
            code = CloseCode.INVALID_DATA if malformed else CloseCode.POLICY_VIOLATION
            logger.warning(
                "link %s: %d bad messages in a row; closing with %d",
                self.name,
                self._bad_in_a_row,
                code,
            )
            raise _CloseLink(code, "too many bad messages")

    # -- send ---------------------------------------------------------------------------------

    async def _send_pump(self) -> None:
        send = self.transport.send
        outbox = self.outbox
        stats = self.stats
        batch_limit = (
            self.config.max_batch_messages if (self.framed and self.config.batching) else 1
        )
        serialize = self.serializer.serialize
        while True:
            control = self._control
            if control:
                data = control[0]
                await self._timed_send(send, data)
                control.popleft()
                if data[0] == FrameKind.PONG:
                    self._pending_pongs -= 1
                continue
            expired = outbox.expire()
            if expired:
                stats.dropped += expired
                logger.warning(
                    "link %s: dropped %d messages older than %ss",
                    self.name,
                    expired,
                    outbox.max_age,
                )
            if not outbox:
                await outbox.wait_signal()
                continue
            messages = outbox.peek(batch_limit)
            payloads: list[bytes] = []
            size = 0
            taken = 0
            for message in messages:
                taken += 1
                try:
                    payload = serialize(message)
                except MessageEncodeError as exc:
                    self._encode_failed(message, exc)
                    continue
                payloads.append(payload)
                size += len(payload)
                if size >= self.config.max_batch_bytes:
                    break
            if payloads:
                if not self.framed:
                    data = payloads[0]
                elif len(payloads) == 1:
                    data = encode_message(payloads[0])
                else:
                    data = encode_batch(payloads)
                await self._timed_send(send, data)
                stats.messages_out += len(payloads)
                stats.bytes_out += len(data)
                stats.frames_out += 1
            outbox.pop(taken)

    async def send_direct(self, message: BusMessage) -> bool:
        """Write ``message`` now if the link is idle; ``False`` when it must be queued.

        The fast path of a link with one message in flight: it saves the hand-over to the
        send pump (a turn of the event loop). Idle means nothing queued or being written, so
        order is kept, and no direct write yet in this turn of the event loop: the rest of a
        burst queues behind the first message and the pump batches it.
        """
        if (
            not self._running
            or self._wrote_direct
            or self._write_lock.locked()
            or self.outbox
            or self._control
            or self._close_info is not None
        ):
            return False
        try:
            payload = self.serializer.serialize(message)
        except MessageEncodeError as exc:
            self._encode_failed(message, exc)
            return True
        data = encode_message(payload) if self.framed else payload
        self._wrote_direct = True
        asyncio.get_running_loop().call_soon(self._next_turn)
        try:
            await self._timed_send(self.transport.send, data)
        except PeerClosed:
            return False  # the caller queues it: a client's outbox keeps it for the next link
        stats = self.stats
        stats.messages_out += 1
        stats.bytes_out += len(data)
        stats.frames_out += 1
        return True

    def _next_turn(self) -> None:
        self._wrote_direct = False

    def _encode_failed(self, message: BusMessage, exc: MessageEncodeError) -> None:
        self.stats.dropped += 1
        logger.error(
            "link %s: cannot send %s from %s: %s",
            self.name,
            type(message).__name__,
            message.source,
            exc,
        )

    async def _timed_send(self, send: Callable[[bytes], Awaitable[None]], data: bytes) -> None:
        # One write at a time, in the order asked (asyncio.Lock is FIFO). The watchdog closes
        # the link if one write takes longer than send_timeout.
        async with self._write_lock:
            self._send_started = time.monotonic()
            try:
                await send(data)
            finally:
                self._send_started = None

    # -- watchdog -----------------------------------------------------------------------------

    def _abort(self, code: int, reason: str) -> None:
        """End :meth:`run` from outside the pumps: close with ``code`` once they have stopped."""
        if self._close_info is None:
            self._close_info = CloseInfo(code, reason, by_us=True)
        for task in self._pumps:
            task.cancel()


class _Watchdog:
    """A link's periodic check, on a timer: a write stuck longer than ``send_timeout`` closes
    with :attr:`CloseCode.PEER_TOO_SLOW`; with our own keepalive (framed server side), it
    sends pings and closes with 1011 when nothing was received for ``ping_interval +
    ping_timeout``."""

    __slots__ = ("_handle", "_keepalive", "_link", "_loop", "_next_ping", "_tick")

    def __init__(self, link: Link, loop: asyncio.AbstractEventLoop) -> None:
        config = link.config
        self._link = link
        self._loop = loop
        self._keepalive = config.ping_interval if config.app_keepalive else None
        periods = [config.send_timeout]
        if self._keepalive is not None:
            periods.append(self._keepalive)
        self._tick = max(0.01, min(periods) / 4)
        self._next_ping = time.monotonic() + (self._keepalive or 0)
        self._handle: asyncio.TimerHandle | None = loop.call_later(self._tick, self._check)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        self._handle = None
        link = self._link
        config = link.config
        now = time.monotonic()
        started = link._send_started
        if started is not None and now - started > config.send_timeout:
            logger.warning(
                "link %s: peer has not read for %.1fs (send timeout); closing with %d",
                link.name,
                now - started,
                CloseCode.PEER_TOO_SLOW,
            )
            link._abort(CloseCode.PEER_TOO_SLOW, "peer too slow")
            return
        keepalive = self._keepalive
        if keepalive is not None:
            idle_limit = keepalive + (config.ping_timeout or keepalive)
            if now - link._last_received > idle_limit:
                logger.warning(
                    "link %s: nothing received for %.1fs (keepalive timeout); closing with 1011",
                    link.name,
                    now - link._last_received,
                )
                link._abort(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
                return
            if now >= self._next_ping:
                self._next_ping = now + keepalive
                link._push_control(encode_ping(time.monotonic_ns()))
        self._handle = self._loop.call_later(self._tick, self._check)
