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
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "Frame",
    "FrameKind",
    "FramingError",
    "SUBPROTOCOL_PREFIX",
    "UPGRADE_ACK",
    "choose_subprotocol",
    "decode_frame",
    "encode_batch",
    "encode_message",
    "encode_ping",
    "encode_pong",
    "encode_upgrade",
    "parse_upgrade",
    "subprotocol_for",
]

SUBPROTOCOL_PREFIX = "busproxy.v1."

_LENGTH = struct.Struct(">I")
_TOKEN = struct.Struct(">Q")


class FramingError(ValueError):
    """A framed WebSocket message does not follow the layout."""


class FrameKind(enum.IntEnum):
    MESSAGE = 0
    BATCH = 1
    PING = 2
    PONG = 3


@dataclass(frozen=True)
class Frame:
    kind: FrameKind
    payloads: Sequence[bytes | memoryview] = ()
    token: int = 0


def subprotocol_for(content_type: str | None) -> str | None:
    """The subprotocol that carries framed messages of a serializer's ``content_type``
    (``None`` for a serializer that names no format: it speaks the plain format only)."""
    return SUBPROTOCOL_PREFIX + content_type if content_type else None


def choose_subprotocol(offered: Iterable[str], content_type: str | None) -> str | None:
    """The subprotocol a server accepts, among those a client ``offered``, or ``None``."""
    wanted = subprotocol_for(content_type)
    return wanted if wanted is not None and wanted in offered else None


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
        payloads: list[memoryview] = []
        offset, end = 1, len(data)
        while offset < end:
            if offset + 4 > end:
                raise FramingError("truncated length in batch")
            (length,) = _LENGTH.unpack_from(data, offset)
            offset += 4
            if offset + length > end:
                raise FramingError("batch entry longer than the frame")
            payloads.append(view[offset : offset + length])
            offset += length
        return Frame(FrameKind.BATCH, payloads)
    if kind in (FrameKind.PING, FrameKind.PONG):
        if len(data) != 1 + _TOKEN.size:
            raise FramingError("keepalive frame of the wrong length")
        return Frame(FrameKind(kind), token=_TOKEN.unpack_from(data, 1)[0])
    raise FramingError(f"unknown frame kind 0x{kind:02x}")
