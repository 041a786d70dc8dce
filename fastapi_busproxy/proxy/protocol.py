"""A link's protocol as pure code: WebSocket messages and events in; bus messages to deliver,
frames to write, the next deadline and the close code out.

:class:`LinkProtocol` makes every decision of one connection between two buses, and does no
I/O: it never reads a clock (every call that needs the time is given ``now``), never awaits and
never touches a socket. :mod:`._link` feeds it what the socket gives, writes what it asks to
write, delivers what it lets in, and calls :meth:`LinkProtocol.tick` when
:meth:`LinkProtocol.next_deadline` comes. This module decides:

- **limits**: a WebSocket message above ``max_message_size`` closes with 1009;
- **framing**: the plain format (one bus message per WebSocket message) or our framed one
  (:mod:`.framing`), whose pings are answered with pongs and whose pongs give the round trip;
  each direction switches from plain to framed at the other side's marker when the upgrade is
  made in band (:meth:`LinkProtocol.offer_upgrade`, :meth:`LinkProtocol.expect_upgrade`);
- **what is let in**: a message that does not decode, or that the forwarding rules refuse, is
  counted and logged (once per reason at WARNING) and dropped; ``max_bad_frames`` of them in a
  row close the link (1007 when malformed, 1008 when refused by the rules);
- **batching**: how many queued messages go in one WebSocket message;
- **deadlines**: a write that the peer has not taken within ``send_timeout`` closes with 4000;
  with our own keepalive, a ping every ``ping_interval`` and, when nothing was received for
  ``ping_interval + ping_timeout``, a close with 1011;
- **resume** (v2 links, with a :class:`~.resume.SessionState`): the server's welcome, sequence
  numbers on what crosses, duplicates dropped, acknowledgements (piggybacked on outgoing
  messages, else sent after ``ACK_EVERY`` messages or ``ACK_DELAY`` seconds), the send window
  (nothing new goes out while the replay buffer is full), and the replay when a session
  resumes;
- **the close**: the first reason to close wins and is kept in :attr:`LinkProtocol.close_info`.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from ..closecodes import CloseCode
from ..exceptions import MessageEncodeError
from ..messages import (
    BusJobRequestMessage,
    BusJobResponseMessage,
    BusMessage,
    BusWorkerRegistryMessage,
    JobStatus,
    mark_origin,
    set_link_seq,
    set_trace_context,
    wire_name_of,
)
from ..serializers import MessageSerializer
from .forwarding import ForwardingRules, Refusal
from .framing import (
    JOB_REFUSED_NOTICE,
    MAX_NOTICE,
    UPGRADE_ACK,
    WRONG_WORKER_NOTICE,
    FrameKind,
    FramingError,
    JobRefusal,
    Welcome,
    decode_frame,
    encode_ack,
    encode_batch,
    encode_job_refusal,
    encode_message,
    encode_notice,
    encode_ping,
    encode_pong,
    encode_sequenced,
    encode_traced,
    encode_upgrade,
    encode_welcome,
    is_resumable,
    parse_job_refusal,
    parse_upgrade,
)
from .resume import SessionState

if TYPE_CHECKING:
    from .._receipt import Receipt

logger = logging.getLogger("fastapi_busproxy.proxy")

__all__ = ["CloseInfo", "LinkConfig", "LinkProtocol", "LinkStats", "Packed", "SessionOutcome"]

MAX_PENDING_PONGS = 16
"""Pongs owed at once; pings beyond are not answered (a peer flooding pings cannot grow the
queue of control frames)."""

MAX_PENDING_JOB_NOTICES = 16
"""``job refused`` notices waiting to be written at once; a refused job beyond is not told
(its requester's job ends at its timeout)."""

_JOB_NOTICE_START = bytes([FrameKind.NOTICE]) + JOB_REFUSED_NOTICE.encode()

ACK_EVERY = 32
"""Resumable links: messages delivered before an acknowledgement goes out on its own."""
ACK_EVERY_BYTES = 65_536
"""...or bytes received (so that a peer's replay buffer of a few large messages drains)."""
ACK_DELAY = 0.05
"""...or seconds after the first unacknowledged delivery, when nothing outgoing carried one."""

# Closes that are part of normal operation: logged at INFO, not as warnings.
_NORMAL_CODES = frozenset(
    (CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY, CloseCode.SERVICE_RESTART, 1005)
)


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
        resumes: connections that resumed the session of an earlier one.
        sessions_lost: connections that could not resume (the peer no longer had the session),
            and, on the server, sessions given up after their grace period.
        lost_unacknowledged: messages sent in a lost session that the peer never acknowledged.
        replayed: messages sent again after a resume.
        duplicates: inbound messages dropped because they had been delivered already.
        last_rtt: the last keepalive round-trip time in seconds, if measured.
        by_type: while :func:`count_by_type` is on: per message type (its wire name),
            ``[messages in, messages out, payload bytes in, payload bytes out]``.
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
    resumes: int = 0
    sessions_lost: int = 0
    lost_unacknowledged: int = 0
    replayed: int = 0
    duplicates: int = 0
    last_rtt: float | None = None
    by_type: dict[str, list[int]] = field(default_factory=dict)

    def count_type(self, message: BusMessage, size: int, out: int) -> None:
        """One message of ``size`` payload bytes in (``out=0``) or out (``out=1``)."""
        cls = type(message)
        name = wire_name_of(cls) or cls.__name__
        counts = self.by_type.get(name)
        if counts is None:
            counts = self.by_type[name] = [0, 0, 0, 0]
        counts[out] += 1
        counts[2 + out] += size


_by_type = False  # see count_by_type


def count_by_type(on: bool = True) -> None:
    """Count every link's messages by type (:attr:`LinkStats.by_type`) from now on, in this
    process; the metrics turn it on. Off (the default), it costs a flag check per message."""
    global _by_type
    _by_type = on


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


@dataclass(frozen=True)
class SessionOutcome:
    """What the server's welcome meant for the client's session."""

    session: str
    resumed: bool
    lost: int  # messages of an earlier session never acknowledged (0 when resumed)
    previous: str | None  # the session this client had before (None on the first connection)


class Packed(NamedTuple):
    """Queued messages laid in one WebSocket message (see :meth:`LinkProtocol.pack`)."""

    data: bytes | None  # what to write; None when none of the messages could be encoded
    taken: int  # queued messages used up, encoded or not
    messages: int  # bus messages in ``data``


class LinkProtocol:
    """The state and decisions of one connection (see the module documentation).

    Args:
        name: the link's name, for log lines.
        config: limits, deadlines and batching.
        stats: the proxy's counters (they outlive the connection).
        serializer: the bus messages' codec.
        rules: what the peer may send.
        framed: our framed format (negotiated as the WebSocket subprotocol) rather than the
            plain one, both ways.
        now: the time the connection opened, on the caller's clock.
        session: on a resumable (v2) link, the session's numbers and replay. The client waits
            for the server's welcome before sending anything sequenced; the server sends it
            first (:meth:`welcome`).
    """

    # A server holds one per connection: slots instead of an instance dict (about 1 KiB).
    __slots__ = (
        "_ack_timer_set",
        "_acked_out",
        "_answers",
        "_awaiting_upgrade_ack",
        "_awaiting_welcome",
        "_bad_in_a_row",
        "_control",
        "_expect",
        "_keepalive",
        "_last_received",
        "_logged_refusals",
        "_next_ping",
        "_owed_bytes",
        "_pending_job_notices",
        "_pending_pongs",
        "_undelivered",
        "_upgrade_expected",
        "_upgrade_session",
        "_write_started",
        "client",
        "close_info",
        "config",
        "name",
        "outcome",
        "receive_framed",
        "rules",
        "send_framed",
        "serializer",
        "session",
        "stats",
        "tick_interval",
        "undelivered_bytes",
    )

    def __init__(
        self,
        *,
        name: str,
        config: LinkConfig,
        stats: LinkStats,
        serializer: MessageSerializer,
        rules: ForwardingRules,
        framed: bool,
        now: float,
        session: SessionState | None = None,
        client: bool = False,
    ) -> None:
        self.name = name
        self.client = client
        """The client's end of the link (the server's otherwise)."""
        self.config = config
        self.stats = stats
        self.serializer = serializer
        self.rules = rules
        self.send_framed = framed  # what we write is framed
        self.receive_framed = framed  # what we read is framed
        self._upgrade_expected: tuple[str, ...] = ()  # client: the subprotocols it offered
        # Client: the session a resumable in-band upgrade takes up; while it is pending, no
        # data goes out (see expect_upgrade).
        self._upgrade_session: SessionState | None = None
        self._awaiting_upgrade_ack = False  # server: upgraded in band, the client not yet
        self.close_info: CloseInfo | None = None
        # Frames that go ahead of queued messages: announcements, pongs, pings. Made on first
        # use (a server holds one protocol per connection).
        self._control: deque[bytes] | None = None
        self._pending_pongs = 0
        self._pending_job_notices = 0
        # Answers made up for our jobs the peer refused (see take_answers).
        self._answers: list[BusMessage] | None = None
        self._bad_in_a_row = 0
        self._logged_refusals: set[str] | None = None
        self._write_started: float | None = None
        self._last_received = now
        keepalive = config.ping_interval if config.app_keepalive else None
        self._keepalive = keepalive
        self._next_ping = now + keepalive if keepalive is not None else None
        periods = [config.send_timeout] + ([keepalive] if keepalive is not None else [])
        self.tick_interval = max(0.01, min(periods) / 4)
        """How often :meth:`tick` should run: a quarter of the shortest deadline."""
        self.session = session
        self.outcome: SessionOutcome | None = None
        """Client side: set by the server's welcome."""
        self._awaiting_welcome = session is not None
        self._expect = session.delivered + 1 if session is not None else 0
        # What receive_data returned and was not yet delivered, a batch per frame:
        # [sequence numbers, payload sizes, how many delivered, the last number consumed].
        self._undelivered: deque[list[Any]] | None = None
        self.undelivered_bytes = 0
        """Payload bytes let in and not yet delivered: at most our receive window (what we
        advertised, :attr:`SessionState.limit`), plus one batch."""
        self._acked_out = session.delivered if session is not None else 0
        self._owed_bytes = 0
        self._ack_timer_set = False

    # -- state --------------------------------------------------------------------------------

    @property
    def framed(self) -> bool:
        """Framed both ways (negotiated, or upgraded in band and acknowledged)."""
        return self.send_framed and self.receive_framed

    def offer_upgrade(self, subprotocol: str) -> None:
        """Server side, on a plain connection whose client offered ``subprotocol``: upgrade in
        band. The marker goes out first; what follows it is framed, and what the client sends
        is read plain until its answer."""
        assert not self.send_framed, "the link is framed already"
        assert self._control is None, "the upgrade goes out before anything else"
        self.queue_control(encode_upgrade(subprotocol))
        self.send_framed = True
        self._awaiting_upgrade_ack = True

    def expect_upgrade(self, offered: Sequence[str], session: SessionState | None = None) -> None:
        """Client side, on a plain connection after offering ``offered``: a server that
        accepted without choosing one may still upgrade in band, to any of them.

        With ``session``, an upgrade to a resumable subprotocol takes the session up (the
        server's welcome follows its marker), and no data goes out until the server has
        spoken: sent plain, it would be outside the session (neither numbered nor kept for
        replay) and would overtake what the session replays. The first thing the server
        sends decides: its marker, or a plain message (a server that does not upgrade; an
        earlier session then cannot go on, see :attr:`outcome`).
        """
        self._upgrade_expected = tuple(offered)
        self._upgrade_session = session

    def welcome(self, *, resumed: bool, peer_delivered: int = 0) -> None:
        """Server side, first on a resumable link: tell the client its session (in
        :attr:`session`), whether it resumed, and what was delivered; when it resumed, replay
        what the client did not deliver (the caller checked ``can_resume``)."""
        session = self.session
        assert session is not None
        assert session.session is not None
        assert self._control is None or (
            self._awaiting_upgrade_ack and len(self._control) == 1
        ), "the welcome goes out before anything else (but an in-band upgrade's marker)"
        self._awaiting_welcome = False
        self.queue_control(
            encode_welcome(
                Welcome(session.session, resumed, session.delivered, window=session.limit)
            )
        )
        if resumed:
            self._queue_replay(session.resume(peer_delivered))

    def _queue_replay(self, entries: list[tuple[int, bytes]]) -> None:
        config = self.config
        session = self.session
        assert session is not None
        i = 0
        while i < len(entries):
            first = entries[i][0]
            payloads: list[bytes] = []
            size = 0
            while (
                i < len(entries)
                and len(payloads) < config.max_batch_messages
                and size < config.max_batch_bytes
            ):
                payloads.append(entries[i][1])
                size += len(entries[i][1])
                i += 1
            self.queue_control(encode_sequenced(first, session.delivered, payloads))
        self._acked_out = session.delivered
        self.stats.replayed += len(entries)

    @property
    def can_send_data(self) -> bool:
        """Queued messages may go out: not waiting for the welcome, and (on a resumable
        link) the replay buffer has room."""
        session = self.session
        if session is None:
            return self._upgrade_session is None
        return not self._awaiting_welcome and session.window_open

    @property
    def drained(self) -> bool:
        """Resumable link: the peer acknowledged everything sent."""
        session = self.session
        return session is not None and not self._awaiting_welcome and not session.unacknowledged

    @property
    def closing(self) -> bool:
        """A reason to close is known: nothing more is delivered or written."""
        return self.close_info is not None

    def close(self, code: int, reason: str, error: BaseException | None = None) -> None:
        """This side closes with ``code`` (the first reason given wins)."""
        if self.close_info is None:
            self.close_info = CloseInfo(code, reason, by_us=True, error=error)

    def peer_closed(self, code: int, reason: str) -> None:
        """The connection is closed underneath us, or by the peer with ``code``."""
        if self.close_info is None:
            self.close_info = CloseInfo(code, reason, by_us=False)

    # -- inbound ------------------------------------------------------------------------------

    def receive_data(self, data: bytes | str, now: float) -> list[BusMessage]:
        """One WebSocket message from the peer: the bus messages to deliver, in order.

        What is refused is counted and logged here; when it calls for closing the link,
        :attr:`close_info` is set and what was let in before it is still returned.
        """
        if self.close_info is not None:
            return []
        self._last_received = now
        if isinstance(data, str):
            self._refuse("text_frame", "text WebSocket message (send binary)", malformed=True)
            return []
        stats = self.stats
        size = len(data)
        stats.bytes_in += size
        if size > self.config.max_message_size:
            stats.oversized += 1
            logger.warning(
                "link %s: %d-byte message exceeds the %d-byte limit; closing with 1009",
                self.name,
                size,
                self.config.max_message_size,
            )
            self.close(CloseCode.MESSAGE_TOO_BIG, "message too big")
            return []
        if not self.receive_framed:
            if self._awaiting_upgrade_ack and data == UPGRADE_ACK:
                self._awaiting_upgrade_ack = False
                self.receive_framed = True
                return []
            if self._upgrade_expected:
                upgrade = parse_upgrade(data) if data.startswith(UPGRADE_ACK[:2]) else None
                if upgrade is not None and upgrade in self._upgrade_expected:
                    # Framed from the server on; our answer goes ahead of anything queued
                    # later, and what we send after it is framed.
                    self.receive_framed = True
                    self.queue_control(UPGRADE_ACK)
                    self.send_framed = True
                    self._upgraded(upgrade)
                    return []
                self._upgraded(None)
            message = self._accept(data)
            return [message] if message is not None else []
        try:
            frame = decode_frame(data)
        except FramingError as exc:
            self._refuse("framing", str(exc), malformed=True)
            return []
        if frame.kind is FrameKind.PING:
            if self._pending_pongs < MAX_PENDING_PONGS:
                self._pending_pongs += 1
                self.queue_control(encode_pong(frame.token))
            return []
        if frame.kind is FrameKind.PONG:
            stats.last_rtt = max(0.0, now - frame.token / 1e9)
            return []
        if frame.kind is FrameKind.SEQUENCED:
            return self._receive_sequenced(
                frame.seq, frame.token, frame.payloads, size, frame.contexts
            )
        if frame.kind is FrameKind.ACK:
            self._receive_ack(frame.token)
            return []
        if frame.kind is FrameKind.WELCOME:
            assert frame.welcome is not None
            self._receive_welcome(frame.welcome)
            return []
        if frame.kind is FrameKind.NOTICE:
            self._receive_notice(frame.notice)
            return []
        accepted: list[BusMessage] = []
        contexts = frame.contexts
        for index, payload in enumerate(frame.payloads):
            message = self._accept(payload)
            if message is not None:
                if contexts and contexts[index]:
                    set_trace_context(message, contexts[index])
                accepted.append(message)
            if self.closing:  # too many bad messages in a row
                break
        return accepted

    def _receive_sequenced(
        self,
        first: int,
        ack: int,
        payloads: Sequence[bytes | memoryview],
        size: int,
        contexts: Sequence[bytes] = (),
    ) -> list[BusMessage]:
        session = self.session
        if session is None or self._awaiting_welcome:
            self._refuse("framing", "sequenced frame outside a resumable session", malformed=True)
            return []
        if not self._receive_ack(ack):
            return []
        self._owed_bytes += size
        session_id = session.session
        expect = self._expect
        accepted: list[BusMessage] = []
        seqs: list[int] = []
        sizes: list[int] = []
        seq = first
        for index, payload in enumerate(payloads):
            if seq < expect:
                self.stats.duplicates += 1  # replayed, and delivered already
            elif seq > expect:
                self._protocol_error(f"message {seq} arrived, {expect} expected")
                break
            else:
                expect += 1
                message = self._accept(payload)
                if message is not None:
                    if contexts and contexts[index]:
                        set_trace_context(message, contexts[index])
                    if session_id is not None:
                        set_link_seq(message, session_id, seq)
                    accepted.append(message)
                    seqs.append(seq)
                    sizes.append(len(payload))
                if self.closing:
                    break
            seq += 1
        self._expect = expect
        pending = self._undelivered
        if accepted or pending:
            # Refused messages count as delivered once what came before them is.
            if pending is None:
                pending = self._undelivered = deque()
            pending.append([seqs, sizes, 0, expect - 1])
            self.undelivered_bytes += sum(sizes)
            overshoot = max(self.config.max_batch_bytes, self.config.max_message_size)
            if self.undelivered_bytes > session.limit + overshoot:
                self._protocol_error(
                    f"{self.undelivered_bytes} bytes sent unacknowledged, beyond the"
                    f" {session.limit}-byte window"
                )
                return []
        elif expect - 1 > session.delivered:
            session.delivered = expect - 1  # all refused: consumed all the same
        return accepted

    def delivered_one(self) -> None:
        """The oldest message :meth:`receive_data` returned and not yet delivered was
        delivered (or could not be): it counts as delivered from now on, and is
        acknowledged."""
        session = self.session
        pending = self._undelivered
        if session is None or not pending:
            return
        batch = pending[0]
        seqs, sizes, done, last = batch
        if done < len(seqs):
            self.undelivered_bytes -= sizes[done]
            done += 1
            if done < len(seqs):
                batch[2] = done
                session.delivered = seqs[done - 1]
                return
        pending.popleft()
        session.delivered = last
        while pending and not pending[0][0]:  # batches of refused messages only
            session.delivered = pending.popleft()[3]
        if not pending:
            self._undelivered = None

    def _receive_ack(self, seq: int) -> bool:
        session = self.session
        if session is None or self._awaiting_welcome:
            self._refuse("framing", "acknowledgement outside a resumable session", malformed=True)
            return False
        if not session.acknowledge(seq):
            self._protocol_error(f"acknowledgement of {seq}, beyond the {session.sent} sent")
            return False
        return True

    def _upgraded(self, subprotocol: str | None) -> None:
        """Client side: the server's first message upgraded the link to ``subprotocol`` in
        band, or (``None``) did not."""
        self._upgrade_expected = ()
        session, self._upgrade_session = self._upgrade_session, None
        if session is None:
            return
        if is_resumable(subprotocol):
            self.session = session
            self._awaiting_welcome = True
            self._expect = session.delivered + 1
            self._acked_out = session.delivered
        elif session.session is not None:
            # Not resumable here: the earlier session cannot go on.
            previous = session.session
            lost = session.lose()
            self.stats.sessions_lost += 1
            self.stats.lost_unacknowledged += lost
            self.outcome = SessionOutcome("", False, lost, previous)

    def _receive_welcome(self, welcome: Welcome) -> None:
        session = self.session
        if session is None or not self._awaiting_welcome:
            self._protocol_error("unexpected welcome")
            return
        previous = session.session
        if welcome.resumed:
            if previous != welcome.session or not session.can_resume(welcome.received):
                self._protocol_error(
                    f"resumed session {welcome.session} at {welcome.received} does not match"
                    f" ours ({previous}, {session.peer_acked}..{session.sent})"
                )
                return
            self._queue_replay(session.resume(welcome.received))
            self.stats.resumes += 1
            lost = 0
        else:
            lost = session.lose() if previous is not None else 0
            if previous is not None:
                self.stats.sessions_lost += 1
                self.stats.lost_unacknowledged += lost
            session.session = welcome.session
        session.peer_window = welcome.window or None
        self._expect = session.delivered + 1
        self._acked_out = session.delivered
        self._awaiting_welcome = False
        self.outcome = SessionOutcome(welcome.session, welcome.resumed, lost, previous)

    def _protocol_error(self, detail: str) -> None:
        self.stats.rejected += 1
        reasons = self.stats.rejected_by_reason
        reasons["protocol"] = reasons.get("protocol", 0) + 1
        logger.warning("link %s: %s; closing with %d", self.name, detail, CloseCode.PROTOCOL_ERROR)
        self.close(CloseCode.PROTOCOL_ERROR, "protocol error")

    # -- acknowledgements ---------------------------------------------------------------------

    def ack_after_delivery(self) -> bool:
        """After delivering what a frame carried: queue an acknowledgement if enough is owed.
        ``True`` when one is owed but not yet due: call :meth:`ack_timer` in ``ACK_DELAY``
        seconds (the caller keeps at most one such timer; see :attr:`ack_timer_wanted`)."""
        session = self.session
        if session is None:
            return False
        owed = session.delivered - self._acked_out
        if owed <= 0:
            return False
        if owed >= ACK_EVERY or self._owed_bytes >= ACK_EVERY_BYTES:
            self._queue_ack()
            return False
        if self._ack_timer_set:
            return False
        self._ack_timer_set = True
        return True

    def ack_timer(self) -> None:
        """``ACK_DELAY`` after :meth:`ack_after_delivery` asked: acknowledge what is owed."""
        self._ack_timer_set = False
        session = self.session
        if session is not None and session.delivered > self._acked_out and not self.closing:
            self._queue_ack()

    def _queue_ack(self) -> None:
        session = self.session
        assert session is not None
        self._acked_out = session.delivered
        self._owed_bytes = 0
        self.queue_control(encode_ack(session.delivered))

    def _accept(self, payload: bytes | memoryview) -> BusMessage | None:
        try:
            message: object = self.serializer.deserialize(payload)  # type: ignore[arg-type]
        except Exception as exc:  # a custom serializer may raise anything on bad input
            self._refuse("malformed", str(exc), malformed=True)
            return None
        if not isinstance(message, BusMessage):  # a custom serializer's "nothing"
            self._refuse("malformed", f"decoded to {type(message).__name__}", malformed=True)
            return None
        refusal = self.rules.check_inbound(message)
        if refusal is Refusal.FOREIGN_REGISTRY and isinstance(message, BusWorkerRegistryMessage):
            self._foreign_registry(message)
            return None
        if refusal is not None:
            self._refuse(
                refusal.value,
                f"{type(message).__name__} from {message.source!r} to {message.target!r}",
                malformed=False,
            )
            if isinstance(message, BusJobRequestMessage):
                self._tell_job_refused(message, refusal.value)
            return None
        self._bad_in_a_row = 0
        self.stats.messages_in += 1
        if _by_type:
            self.stats.count_type(message, len(payload), 0)
        mark_origin(message, self.name)
        return message

    def _foreign_registry(self, message: BusWorkerRegistryMessage) -> None:
        """The peer announced workers this link does not join: refused, as any message
        that may not cross. Our client takes it as its own names being wrong (the server
        announces what it serves) and closes with 4003; a server tells the peer why in a
        notice (framed links), since a client of ours then knows its names are wrong."""
        rules = self.rules
        announced = ", ".join(repr(entry.name) for entry in message.workers) or "none"
        reason = (
            f"expected worker {rules.remote_worker!r} for {rules.local_worker!r},"
            f" got {announced} for {message.target!r}"
        )
        if self.client:
            self._wrong_worker(reason)
            return
        self._refuse(Refusal.FOREIGN_REGISTRY.value, reason, malformed=False, tell=False)
        if self.send_framed:
            self.queue_control(encode_notice(WRONG_WORKER_NOTICE + reason))

    def _wrong_worker(self, reason: str) -> None:
        """This client's worker names do not match the server's: close with 4003 (no retry
        fixes it), naming both."""
        self.stats.rejected += 1
        reasons = self.stats.rejected_by_reason
        reasons["wrong_worker"] = reasons.get("wrong_worker", 0) + 1
        logger.warning(
            "link %s: worker names do not match the peer's: %s; closing with %d",
            self.name,
            reason,
            CloseCode.WRONG_WORKER,
        )
        self.close(CloseCode.WRONG_WORKER, reason.encode()[:120].decode(errors="ignore"))

    def _tell_job_refused(self, message: BusJobRequestMessage, reason: str) -> None:
        """Each refused job request is told to a peer of ours, so that its requester's job
        ends now rather than at its timeout. At most ``MAX_PENDING_JOB_NOTICES`` wait to be
        written: a peer that floods refused jobs and reads nothing gets no more (its jobs
        then end at their timeouts)."""
        if (
            not self.send_framed
            or self.closing
            or self._pending_job_notices >= MAX_PENDING_JOB_NOTICES
        ):
            return
        self._pending_job_notices += 1
        refusal = JobRefusal(message.job_id, message.source, str(message.target), reason)
        self.queue_control(encode_job_refusal(refusal))

    def _receive_notice(self, text: str) -> None:
        if self.client and text.startswith(WRONG_WORKER_NOTICE):
            self._wrong_worker(text[len(WRONG_WORKER_NOTICE) :])
            return
        if text.startswith(JOB_REFUSED_NOTICE):
            self._job_refused(text)
            return
        logger.warning("link %s: the peer says: %s", self.name, text[:MAX_NOTICE])

    def _job_refused(self, text: str) -> None:
        """The peer refused a job request of ours: its requester gets an error answer, as if
        the worker had given it. Only for the worker this link sends to, whose answers the
        peer could send anyway: a notice can end no other worker's job."""
        refusal = parse_job_refusal(text)
        if refusal is None or refusal.target != self.rules.remote_worker:
            logger.debug("link %s: ignored a job notice: %s", self.name, text[:MAX_NOTICE])
            return
        logger.debug("link %s: the peer refused job %s", self.name, refusal.job_id)
        answer = BusJobResponseMessage(
            source=refusal.target,
            target=refusal.source,
            job_id=refusal.job_id,
            status=JobStatus.ERROR,
            response={
                "error": f"the peer refused the job request ({refusal.reason}):"
                f" {refusal.source!r} may not ask {refusal.target!r} over link {self.name!r}"
            },
        )
        mark_origin(answer, self.name)
        if self._answers is None:
            self._answers = []
        self._answers.append(answer)

    @property
    def has_answers(self) -> bool:
        return self._answers is not None

    def take_answers(self) -> list[BusMessage]:
        """Answers made up for our jobs that the peer refused, to deliver like any message
        let in (unsequenced: the peer's numbering does not count them)."""
        answers = self._answers
        if answers is None:
            return []
        self._answers = None
        return answers

    def _refuse(self, reason: str, detail: str, *, malformed: bool, tell: bool = True) -> None:
        stats = self.stats
        stats.rejected += 1
        stats.rejected_by_reason[reason] = stats.rejected_by_reason.get(reason, 0) + 1
        if self._logged_refusals is None:
            self._logged_refusals = set()
        if reason not in self._logged_refusals:
            self._logged_refusals.add(reason)
            logger.warning(
                "link %s: refused inbound data (%s): %s; further refusals of this kind are"
                " logged at DEBUG",
                self.name,
                reason,
                detail,
            )
            if tell and self.send_framed and not self.closing:
                # The peer learns why too, once per kind (our framed format only).
                self.queue_control(encode_notice(f"refused ({reason}): {detail}"))
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
            self.close(code, "too many bad messages")

    # -- outbound -----------------------------------------------------------------------------

    def queue_control(self, data: bytes) -> None:
        """A frame to write ahead of the queued messages."""
        if self._control is None:
            self._control = deque()
        self._control.append(data)

    def announce(self, message: BusMessage) -> None:
        """Queue ``message`` ahead of the queued messages (readiness announcements)."""
        payload = self.serializer.serialize(message)
        self.queue_control(encode_message(payload) if self.send_framed else payload)

    def next_control(self) -> bytes | None:
        """The control frame to write next, if any (call :meth:`control_written` once it is)."""
        control = self._control
        return control[0] if control else None

    def control_written(self) -> None:
        control = self._control
        assert control
        data = control.popleft()
        if not control:
            self._control = None  # an empty deque still holds a block (about 700 bytes)
        if data[0] == FrameKind.PONG and self.send_framed:
            self._pending_pongs -= 1
        elif data.startswith(_JOB_NOTICE_START):
            self._pending_job_notices -= 1

    @property
    def batch_limit(self) -> int:
        """Messages one WebSocket message may carry."""
        return (
            self.config.max_batch_messages if (self.send_framed and self.config.batching) else 1
        )

    def pack(self, messages: Sequence[BusMessage]) -> Packed:
        """Lay the first of ``messages`` (up to the batch limits) in one WebSocket message.

        A message that cannot be encoded is counted as dropped, logged and skipped. Call
        :meth:`written` once the data is written.
        """
        payloads: list[bytes] = []
        contexts: list[bytes | None] | None = None  # made for the first traced message
        receipts: list[Receipt] | None = None  # made for the first message with one
        size = 0
        taken = 0
        limit = self.batch_limit
        serialize = self.serializer.serialize
        for message in messages:
            if taken >= limit:
                break
            taken += 1
            try:
                payload = serialize(message)
            except MessageEncodeError as exc:
                self.encode_failed(message, exc)
                continue
            context = message.trace_context
            if context is not None and contexts is None:
                contexts = [None] * len(payloads)
            if contexts is not None:
                contexts.append(context)
            payloads.append(payload)
            size += len(payload)
            if message.receipt is not None:
                if receipts is None:
                    receipts = []
                receipts.append(message.receipt)
            if _by_type:
                self.stats.count_type(message, len(payload), 1)
            if size >= self.config.max_batch_bytes:
                break
        if not payloads:
            return Packed(None, taken, 0)
        if not self.send_framed:
            contexts = None  # the reference's plain format carries no trace context
        session = self.session
        if session is not None:
            # (A replay resends the payloads without their trace contexts.)
            first = session.record(payloads, receipts or ())
            self._acked_out = session.delivered
            self._owed_bytes = 0
            if contexts is not None:
                data = encode_traced(payloads, contexts, first, session.delivered)
            else:
                data = encode_sequenced(first, session.delivered, payloads)
            return Packed(data, taken, len(payloads))
        if contexts is not None:
            return Packed(encode_traced(payloads, contexts), taken, len(payloads))
        if not self.send_framed:
            data = payloads[0]
        elif len(payloads) == 1:
            data = encode_message(payloads[0])
        else:
            data = encode_batch(payloads)
        return Packed(data, taken, len(payloads))

    def written(self, packed: Packed) -> None:
        """``packed`` was written: count it."""
        if packed.data is not None:
            stats = self.stats
            stats.messages_out += packed.messages
            stats.bytes_out += len(packed.data)
            stats.frames_out += 1

    def encode_failed(self, message: BusMessage, exc: MessageEncodeError) -> None:
        self.stats.dropped += 1
        logger.error(
            "link %s: cannot send %s from %s: %s",
            self.name,
            type(message).__name__,
            message.source,
            exc,
        )

    def write_started(self, now: float) -> None:
        self._write_started = now

    def write_finished(self) -> None:
        self._write_started = None

    @property
    def writing(self) -> bool:
        return self._write_started is not None

    # -- deadlines ----------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Check the deadlines at ``now``: close a link whose peer is too slow or silent, and
        queue a keepalive ping when one is due."""
        if self.close_info is not None:
            return
        config = self.config
        started = self._write_started
        if started is not None and now - started > config.send_timeout:
            logger.warning(
                "link %s: peer has not read for %.1fs (send timeout); closing with %d",
                self.name,
                now - started,
                CloseCode.PEER_TOO_SLOW,
            )
            self.close(CloseCode.PEER_TOO_SLOW, "peer too slow")
            return
        keepalive = self._keepalive
        if keepalive is None or not self.send_framed:
            return  # our pings are framed: only for a peer that reads the framed format
        idle_limit = keepalive + (config.ping_timeout or keepalive)
        if now - self._last_received > idle_limit:
            logger.warning(
                "link %s: nothing received for %.1fs (keepalive timeout); closing with 1011",
                self.name,
                now - self._last_received,
            )
            self.close(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
            return
        assert self._next_ping is not None
        if now >= self._next_ping:
            self._next_ping = now + keepalive
            self.queue_control(encode_ping(int(now * 1e9)))
