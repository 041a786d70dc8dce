"""WebSocket close codes used by the proxies, by name.

The 1xxx codes are RFC 6455's; the 4xxx codes are this project's own (the range RFC 6455 leaves
to applications). A rejected handshake never gets a close code: it is answered with an HTTP
status (403, or 401) before the WebSocket is accepted.
"""

from __future__ import annotations

import enum

__all__ = ["CloseCode"]


class CloseCode(enum.IntEnum):
    """Why a proxy link was closed."""

    NORMAL_CLOSURE = 1000
    """The link was closed on purpose (a proxy deactivated or replaced)."""

    GOING_AWAY = 1001
    """The process is shutting down, or the proxy stopped."""

    PROTOCOL_ERROR = 1002
    """The peer broke the framing of the negotiated subprotocol."""

    INVALID_DATA = 1007
    """Too many malformed frames in a row (bad JSON, text frames, undecodable data)."""

    POLICY_VIOLATION = 1008
    """Too many refused messages in a row (forged source, wrong target, unknown type), or a
    failed authorization after the WebSocket was accepted."""

    MESSAGE_TOO_BIG = 1009
    """A message larger than the link's ``max_message_size``."""

    INTERNAL_ERROR = 1011
    """A fault in this side's own code, or the peer stopped answering keepalive pings."""

    SERVICE_RESTART = 1012
    """The server is restarting (uvicorn closes open WebSockets with it on shutdown)."""

    TRY_AGAIN_LATER = 1013
    """The server is overloaded or not ready (the shared runner is not running)."""

    PEER_TOO_SLOW = 4000
    """The peer did not read fast enough: the link's send queue stayed full past its limit."""

    DUPLICATE_SESSION = 4001
    """Refused: another connection already holds this worker name."""

    SESSION_REPLACED = 4002
    """Closed: a newer connection took over this worker name."""

    WRONG_WORKER = 4003
    """Refused: the peer announced a worker other than the one this link joins (a name set
    differently on the two sides); the reason names both. No retry can fix it."""
