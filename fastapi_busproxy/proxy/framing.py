"""How bus messages are laid in WebSocket messages: the plain format and our framed one.

**Plain** (the reference's, and the fallback): one binary WebSocket message carries one
serialized bus message. Used whenever the peer did not accept one of our subprotocols.

**Framed** (negotiated with the WebSocket subprotocol ``busproxy.v1.<format>``, for example
``busproxy.v1.json``): the first byte of each binary WebSocket message says what follows.

=======  =====================================================================
``0x00``  one serialized message
``0x01``  a batch: serialized messages, each preceded by its length (4 bytes, big-endian)
``0x02``  keepalive ping: an 8-byte token
``0x03``  keepalive pong: the token of the ping it answers
=======  =====================================================================

Batching lets one WebSocket message carry every message queued at that moment; pings let the
server side measure round trips and detect a dead peer without help from the ASGI server.

**Resumable** (``busproxy.v2.<format>``, offered ahead of v1 by our client and preferred by our
server when it keeps sessions): the v1 frames, plus

=======  =====================================================================
``0x04``  sequenced messages: the first one's sequence number (8 bytes), the
          sender's cumulative acknowledgement (8 bytes), then length-prefixed
          serialized messages as in a batch
``0x05``  acknowledgement: the highest sequence number delivered (8 bytes)
``0x06``  welcome (server to client, the first frame): UTF-8 JSON
          ``{"session": id, "resumed": bool, "received": n, "window": bytes}``
=======  =====================================================================

Both versions also carry ``0x07``, a *notice*: UTF-8 text telling the peer why something it
sent was refused, for the peer's own log and decisions (``"wrong worker: ..."`` when its
readiness announcement named workers the link does not join; ``"refused (reason): ..."`` once
per kind of refusal; ``"job refused: {json}"`` for each refused job request, naming the job, its
requester and its worker, so the requester's job ends at once with the reason instead of at its
timeout).

**Traced** messages (sent while tracing is on, :mod:`fastapi_busproxy.tracing`) go in ``0x08``
(a traced batch) or ``0x09`` (traced sequenced: the ``0x04`` header first): each message is
preceded by its W3C trace context (2-byte length, then ``traceparent``, a newline and
``tracestate``, at most 1 KiB; length 0 for none) and then, as in a batch, its length and
payload. Untraced messages keep the frames above, byte for byte; the plain format never
carries a trace context.

The client that resumes names its session, what it has delivered and what the server
acknowledged of its own in the handshake's ``x-busproxy-resume: <session> <received>
[<acknowledged>]`` header (an instance taking the session over from a dead one starts from the
last two). Readiness announcements stay unsequenced
(``0x00``): each connection sends them anew. :mod:`.resume` keeps the numbers and the replay.

**In-band upgrade.** A server whose socket the app accepted itself, without choosing a
subprotocol (as the reference page shows), still sees in the handshake that our client offered
``busproxy.v1.<format>``. It then opens the plain connection with an *upgrade* message
(``0x00 0xff "busproxy-upgrade " <subprotocol>``, which no serializer produces) and sends
framed from there on; our client answers with ``0x00 0xff "busproxy-upgraded"`` and sends
framed from there on. Each side reads the plain format until the other's marker, so nothing
sent around the switch is misread. Neither marker is ever sent to a peer that did not offer
our subprotocol.

Everything here is pure: bytes in, frames out.
"""

from __future__ import annotations

import enum
import json
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "Frame",
    "FrameKind",
    "FramingError",
    "JOB_REFUSED_NOTICE",
    "JobRefusal",
    "MAX_TRACE_CONTEXT",
    "RESUME_HEADER",
    "SUBPROTOCOL_PREFIX",
    "SUBPROTOCOL_PREFIX_V2",
    "UPGRADE_ACK",
    "WINDOW_HEADER",
    "Welcome",
    "choose_subprotocol",
    "decode_frame",
    "encode_ack",
    "encode_batch",
    "encode_message",
    "encode_job_refusal",
    "encode_traced",
    "encode_notice",
    "encode_ping",
    "encode_pong",
    "encode_sequenced",
    "encode_upgrade",
    "encode_welcome",
    "parse_job_refusal",
    "format_resume_header",
    "is_resumable",
    "parse_resume_acknowledged",
    "parse_resume_header",
    "parse_upgrade",
    "parse_window_header",
    "subprotocol_for",
    "subprotocols_for",
]

SUBPROTOCOL_PREFIX = "busproxy.v1."
SUBPROTOCOL_PREFIX_V2 = "busproxy.v2."
RESUME_HEADER = "x-busproxy-resume"
WINDOW_HEADER = "x-busproxy-window"
"""The client's receive window on a resumable link, in bytes (the server's is in its welcome):
what the other side may send unacknowledged. A receiver reads on while it delivers, up to it."""

_LENGTH = struct.Struct(">I")
_CONTEXT_LENGTH = struct.Struct(">H")
_CONTEXT = re.compile(rb"([\x20-\x7e]+(\n[\x20-\x7e]*)?)?")
_TOKEN = struct.Struct(">Q")
_SEQ_HEADER = struct.Struct(">QQ")
_MAX_SEQ = 0xFFFFFFFFFFFFFFFF


class FramingError(ValueError):
    """A framed WebSocket message does not follow the layout."""


class FrameKind(enum.IntEnum):
    MESSAGE = 0
    BATCH = 1
    PING = 2
    PONG = 3
    SEQUENCED = 4
    ACK = 5
    WELCOME = 6
    NOTICE = 7
    TRACED_BATCH = 8
    TRACED_SEQUENCED = 9


@dataclass(frozen=True)
class Frame:
    kind: FrameKind
    payloads: Sequence[bytes | memoryview] = ()
    token: int = 0  # a ping's or pong's token; an acknowledgement's sequence number
    seq: int = 0  # sequenced: the first message's sequence number
    welcome: Welcome | None = None
    notice: str = ""  # a notice's text
    contexts: Sequence[bytes] = ()  # traced frames: each payload's trace context (b"": none)


@dataclass(frozen=True)
class Welcome:
    """The server's first frame on a resumable link."""

    session: str
    resumed: bool
    received: int  # the highest of the client's sequence numbers the server delivered
    window: int = 0  # bytes the client may send unacknowledged (0: not said)


def subprotocol_for(content_type: str | None, *, version: int = 1) -> str | None:
    """The subprotocol that carries framed messages of a serializer's ``content_type``
    (``None`` for a serializer that names no format: it speaks the plain format only)."""
    if not content_type:
        return None
    return (SUBPROTOCOL_PREFIX_V2 if version == 2 else SUBPROTOCOL_PREFIX) + content_type


def subprotocols_for(content_type: str | None, *, resume: bool) -> list[str]:
    """What a client offers, preferred first: v2 (resumable) when ``resume``, then v1."""
    offered = [subprotocol_for(content_type, version=2)] if resume else []
    offered.append(subprotocol_for(content_type))
    return [name for name in offered if name is not None]


def is_resumable(subprotocol: str | None) -> bool:
    return subprotocol is not None and subprotocol.startswith(SUBPROTOCOL_PREFIX_V2)


def choose_subprotocol(
    offered: Iterable[str], content_type: str | None, *, resume: bool = False
) -> str | None:
    """The subprotocol a server accepts, among those a client ``offered``, or ``None``: v2
    when the server keeps sessions (``resume``) and the client offered it, else v1."""
    offered = list(offered)
    for version in (2, 1) if resume else (1,):
        wanted = subprotocol_for(content_type, version=version)
        if wanted is not None and wanted in offered:
            return wanted
    return None


def format_resume_header(session: str, received: int, acknowledged: int | None = None) -> str:
    """``<session> <received>``, and ``<acknowledged>`` (the highest of the client's own
    messages the server acknowledged) when known: an instance that takes the session over from
    another (durable Redis bus) starts from there."""
    if acknowledged is None:
        return f"{session} {received}"
    return f"{session} {received} {acknowledged}"


def parse_window_header(value: str | None) -> int | None:
    """The client's receive window, or ``None`` if absent or not a positive integer."""
    if not value or not value.isdigit() or len(value) > 19:
        return None
    window = int(value)
    return window if window > 0 else None


def parse_resume_header(value: str | None) -> tuple[str, int] | None:
    """``(session, received)`` from the client's resume header, or ``None`` if absent or bad."""
    parsed = _parse_resume(value)
    return None if parsed is None else (parsed[0], parsed[1])


def parse_resume_acknowledged(value: str | None) -> int | None:
    """The ``acknowledged`` of the client's resume header, or ``None`` if absent or bad."""
    parsed = _parse_resume(value)
    return None if parsed is None else parsed[2]


def _parse_resume(value: str | None) -> tuple[str, int, int | None] | None:
    if not value:
        return None
    fields = value.strip().split(" ")
    if len(fields) not in (2, 3):
        return None
    session = fields[0]
    if not session or len(session) > 128:
        return None
    numbers = []
    for field in fields[1:]:
        if not field.isdigit() or len(field) > 20 or int(field) > _MAX_SEQ:
            return None
        numbers.append(int(field))
    return session, numbers[0], numbers[1] if len(numbers) == 2 else None


_UPGRADE = b"\x00\xffbusproxy-upgrade "
UPGRADE_ACK = b"\x00\xffbusproxy-upgraded"
"""Our client's answer to an in-band upgrade: framed from here on."""


def encode_upgrade(subprotocol: str) -> bytes:
    """The server's in-band upgrade to ``subprotocol`` (framed from here on)."""
    return _UPGRADE + subprotocol.encode("ascii")


def parse_upgrade(data: bytes) -> str | None:
    """The subprotocol an in-band upgrade names, or ``None`` if ``data`` is not one."""
    if not data.startswith(_UPGRADE):
        return None
    try:
        return data[len(_UPGRADE) :].decode("ascii")
    except UnicodeDecodeError:
        return None


def encode_message(payload: bytes) -> bytes:
    return b"\x00" + payload


def encode_batch(payloads: Sequence[bytes]) -> bytes:
    parts = [b"\x01"]
    pack = _LENGTH.pack
    for payload in payloads:
        parts.append(pack(len(payload)))
        parts.append(payload)
    return b"".join(parts)


def encode_ping(token: int) -> bytes:
    return b"\x02" + _TOKEN.pack(token & 0xFFFFFFFFFFFFFFFF)


def encode_pong(token: int) -> bytes:
    return b"\x03" + _TOKEN.pack(token & 0xFFFFFFFFFFFFFFFF)


def encode_sequenced(first_seq: int, ack: int, payloads: Sequence[bytes]) -> bytes:
    parts = [b"\x04", _SEQ_HEADER.pack(first_seq, ack)]
    pack = _LENGTH.pack
    for payload in payloads:
        parts.append(pack(len(payload)))
        parts.append(payload)
    return b"".join(parts)


MAX_TRACE_CONTEXT = 1024
"""Longest trace context a traced frame carries per message, in bytes (W3C allows 55 bytes of
``traceparent`` and 512 of ``tracestate``)."""


def encode_traced(
    payloads: Sequence[bytes], contexts: Sequence[bytes | None], first_seq: int = 0, ack: int = 0
) -> bytes:
    """Messages with their trace contexts: a traced batch, or a traced sequenced frame when
    ``first_seq`` is given. A context longer than :data:`MAX_TRACE_CONTEXT` is left out."""
    if first_seq:
        parts = [bytes((FrameKind.TRACED_SEQUENCED,)), _SEQ_HEADER.pack(first_seq, ack)]
    else:
        parts = [bytes((FrameKind.TRACED_BATCH,))]
    pack_length = _LENGTH.pack
    pack_context = _CONTEXT_LENGTH.pack
    for payload, context in zip(payloads, contexts, strict=True):
        if context is None or len(context) > MAX_TRACE_CONTEXT:
            context = b""
        parts.append(pack_context(len(context)))
        parts.append(context)
        parts.append(pack_length(len(payload)))
        parts.append(payload)
    return b"".join(parts)


def encode_ack(seq: int) -> bytes:
    return b"\x05" + _TOKEN.pack(seq)


MAX_NOTICE = 512
"""Longest notice text read, in bytes (longer is cut)."""

WRONG_WORKER_NOTICE = "wrong worker: "
"""A notice's prefix when the peer's announcement named workers this link does not join."""


JOB_REFUSED_NOTICE = "job refused: "
"""A notice's prefix when one job request was refused: JSON naming the job follows."""


def encode_notice(text: str) -> bytes:
    """A notice to the peer: why something it sent was refused (UTF-8 text, 0x07)."""
    return b"\x07" + text.encode()[:MAX_NOTICE]


@dataclass(frozen=True)
class JobRefusal:
    """What a ``job refused`` notice names: the job, who asked, whom, and why."""

    job_id: str
    source: str
    target: str
    reason: str


def encode_job_refusal(refusal: JobRefusal) -> bytes:
    body = {
        "job": refusal.job_id,
        "source": refusal.source,
        "target": refusal.target,
        "reason": refusal.reason,
    }
    text = JOB_REFUSED_NOTICE + json.dumps(body, separators=(",", ":"))
    if len(text.encode()) > MAX_NOTICE:  # long names: the reason gives way (it is logged)
        body["reason"] = body["reason"][:40]
        text = JOB_REFUSED_NOTICE + json.dumps(body, separators=(",", ":"))
    return encode_notice(text)


def parse_job_refusal(text: str) -> JobRefusal | None:
    """The refusal a ``job refused`` notice names; ``None`` if it is not one, or malformed."""
    if not text.startswith(JOB_REFUSED_NOTICE):
        return None
    try:
        body = json.loads(text[len(JOB_REFUSED_NOTICE) :])
        fields = [body[key] for key in ("job", "source", "target", "reason")]
    except (ValueError, TypeError, KeyError):
        return None
    if not all(isinstance(value, str) for value in fields):
        return None
    return JobRefusal(*fields)


def encode_welcome(welcome: Welcome) -> bytes:
    body: dict[str, object] = {
        "session": welcome.session,
        "resumed": welcome.resumed,
        "received": welcome.received,
    }
    if welcome.window:
        body["window"] = welcome.window
    return b"\x06" + json.dumps(body, separators=(",", ":")).encode()


def _split(
    data: bytes, view: memoryview, offset: int, contexts: list[bytes] | None = None
) -> list[memoryview]:
    """The length-prefixed payloads from ``offset`` on; a traced frame's contexts, each before
    its payload, go to ``contexts``."""
    payloads: list[memoryview] = []
    end = len(data)
    while offset < end:
        if contexts is not None:
            offset = _take_context(data, offset, end, contexts)
        if offset + 4 > end:
            raise FramingError("truncated length in batch")
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += 4
        if offset + length > end:
            raise FramingError("batch entry longer than the frame")
        payloads.append(view[offset : offset + length])
        offset += length
    return payloads


def _take_context(data: bytes, offset: int, end: int, contexts: list[bytes]) -> int:
    if offset + 2 > end:
        raise FramingError("truncated trace context length")
    size: int = _CONTEXT_LENGTH.unpack_from(data, offset)[0]
    offset += 2
    if size > MAX_TRACE_CONTEXT or offset + size > end:
        raise FramingError("trace context too long or longer than the frame")
    context = data[offset : offset + size]
    # Only what a W3C trace context may hold (printable ASCII, one newline): anything else is
    # dropped, and the message goes on without it.
    contexts.append(context if _CONTEXT.fullmatch(context) else b"")
    return offset + size


def _sequenced_header(data: bytes) -> tuple[int, int]:
    if len(data) < 1 + _SEQ_HEADER.size:
        raise FramingError("truncated sequenced frame")
    seq, ack = _SEQ_HEADER.unpack_from(data, 1)
    if seq == 0:
        raise FramingError("sequence numbers start at 1")
    return seq, ack


def _decode_welcome(body: bytes) -> Welcome:
    try:
        fields = json.loads(body)
        session, resumed, received = fields["session"], fields["resumed"], fields["received"]
        window = fields.get("window", 0)
    except (ValueError, TypeError, KeyError) as exc:
        raise FramingError(f"bad welcome: {exc}") from None
    if (
        not isinstance(session, str)
        or not session
        or not isinstance(resumed, bool)
        or not isinstance(received, int)
        or isinstance(received, bool)
        or not 0 <= received <= _MAX_SEQ
        or not isinstance(window, int)
        or isinstance(window, bool)
        or not 0 <= window <= _MAX_SEQ
    ):
        raise FramingError("bad welcome: wrong field types")
    return Welcome(session, resumed, received, window)


def decode_frame(data: bytes) -> Frame:
    """Split a framed WebSocket message.

    Raises:
        FramingError: unknown kind, truncated batch or token.
    """
    if not data:
        raise FramingError("empty frame")
    kind = data[0]
    view = memoryview(data)
    if kind == FrameKind.MESSAGE:
        return Frame(FrameKind.MESSAGE, (view[1:],))
    if kind == FrameKind.BATCH:
        return Frame(FrameKind.BATCH, _split(data, view, 1))
    if kind == FrameKind.SEQUENCED:
        seq, ack = _sequenced_header(data)
        return Frame(FrameKind.SEQUENCED, _split(data, view, 1 + _SEQ_HEADER.size), ack, seq)
    if kind == FrameKind.TRACED_BATCH:
        contexts: list[bytes] = []
        payloads = _split(data, view, 1, contexts)
        return Frame(FrameKind.BATCH, payloads, contexts=contexts)
    if kind == FrameKind.TRACED_SEQUENCED:
        seq, ack = _sequenced_header(data)
        contexts = []
        payloads = _split(data, view, 1 + _SEQ_HEADER.size, contexts)
        return Frame(FrameKind.SEQUENCED, payloads, ack, seq, contexts=contexts)
    if kind in (FrameKind.PING, FrameKind.PONG, FrameKind.ACK):
        if len(data) != 1 + _TOKEN.size:
            raise FramingError(f"{FrameKind(kind).name.lower()} frame of the wrong length")
        return Frame(FrameKind(kind), token=_TOKEN.unpack_from(data, 1)[0])
    if kind == FrameKind.WELCOME:
        return Frame(FrameKind.WELCOME, welcome=_decode_welcome(data[1:]))
    if kind == FrameKind.NOTICE:
        try:
            return Frame(FrameKind.NOTICE, notice=data[1:MAX_NOTICE + 1].decode())
        except UnicodeDecodeError:
            raise FramingError("notice is not UTF-8") from None
    raise FramingError(f"unknown frame kind 0x{kind:02x}")
