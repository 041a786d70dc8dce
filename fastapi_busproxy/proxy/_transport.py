"""The two WebSocket flavours behind one small interface: a Starlette/FastAPI WebSocket on the
server side, a ``websockets`` connection on the client side. Their exceptions are translated
here, at the boundary, into :class:`PeerClosed`."""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

from websockets.exceptions import ConnectionClosed

from ..closecodes import CloseCode


class PeerClosed(Exception):
    """The connection is closed (by the peer, or underneath us)."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class Transport(Protocol):
    websocket: Any

    async def receive(self) -> bytes | str:
        """The next WebSocket message. Raises PeerClosed once the connection is closed."""
        ...

    async def send(self, data: bytes) -> None:
        """Send one binary message. Raises PeerClosed if the connection is closed."""
        ...

    async def close(self, code: int, reason: str) -> None:
        """Close the connection (harmless if already closed)."""
        ...


class StarletteTransport:
    """A Starlette/FastAPI ``WebSocket`` that has been accepted."""

    def __init__(self, websocket: Any) -> None:
        self.websocket = websocket
        self._closed = False

    async def receive(self) -> bytes | str:
        if self._closed:
            raise PeerClosed(CloseCode.GOING_AWAY, "closed")
        try:
            message = await self.websocket.receive()
        except Exception as exc:  # the ASGI server's own errors: the connection is gone
            self._closed = True
            raise PeerClosed(1006, f"receive failed: {exc!r}") from exc
        if message["type"] == "websocket.disconnect":
            self._closed = True
            raise PeerClosed(message.get("code", 1005), message.get("reason") or "")
        data = message.get("bytes")
        if data is not None:
            return data  # type: ignore[no-any-return]
        text = message.get("text")
        return text if text is not None else b""

    async def send(self, data: bytes) -> None:
        if self._closed:
            raise PeerClosed(1006, "connection closed")
        try:
            await self.websocket.send({"type": "websocket.send", "bytes": data})
        except Exception as exc:
            self._closed = True
            raise PeerClosed(1006, f"send failed: {exc!r}") from exc

    async def close(self, code: int, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):  # already closed underneath us
            await self.websocket.close(code=code, reason=reason)


class WebsocketsTransport:
    """A client connection of the ``websockets`` library (asyncio implementation)."""

    def __init__(self, connection: Any) -> None:
        self.websocket = connection

    async def receive(self) -> bytes | str:
        try:
            return await self.websocket.recv()  # type: ignore[no-any-return]
        except ConnectionClosed as exc:
            raise _closed_from(exc) from exc

    async def send(self, data: bytes) -> None:
        try:
            await self.websocket.send(data)
        except ConnectionClosed as exc:
            raise _closed_from(exc) from exc

    async def close(self, code: int, reason: str) -> None:
        await self.websocket.close(code, reason)


def _closed_from(exc: Any) -> PeerClosed:
    frame = exc.rcvd or exc.sent
    if frame is None:
        return PeerClosed(1006, "connection lost")
    return PeerClosed(frame.code, frame.reason)
