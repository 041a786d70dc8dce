"""WebSocketProxyServer: the server end of a link, on a Starlette/FastAPI WebSocket."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, ClassVar

from ..closecodes import CloseCode
from ..exceptions import ConfigurationError
from ..messages import BusMessage
from ..registry import WorkerReadyData
from ..serializers import MessageSerializer
from ._base import ProxyWorker
from ._link import Link
from ._outbox import Outbox
from ._transport import StarletteTransport
from .framing import choose_subprotocol
from .protocol import CloseInfo, LinkConfig

__all__ = ["WebSocketProxyServer"]

logger = logging.getLogger("fastapi_busproxy.proxy")


class WebSocketProxyServer(ProxyWorker):
    """Bridges one accepted WebSocket connection to the local bus.

    Sends the peer the messages whose source is ``worker_name`` and that are targeted at
    ``remote_worker_name``, plus the ``forward_messages`` types sent by ``worker_name``; lets in
    the messages from ``remote_worker_name`` targeted at ``worker_name`` (see
    :mod:`fastapi_busproxy.proxy.forwarding` for the exact rules). Once ``worker_name`` is
    ready, the peer is told so with a registry message, and readiness of the peer's worker,
    when the peer reports it, registers it here as a remote worker until the link goes down.

    The proxy lives as long as the connection: when it closes, the proxy fires
    ``on_client_disconnected`` and finishes (it leaves the runner). Keep the endpoint running
    until then with ``await proxy.wait()``: an ASGI endpoint that returns ends its connection.

    Args:
        name: unique worker name of this proxy (one per connection).
        websocket: a Starlette/FastAPI WebSocket. If it is not accepted yet, the proxy accepts
            it and negotiates the framed subprotocol (batching, keepalive) when the client
            offers it; an already accepted one uses the plain reference format.
        worker_name: the local worker the peer talks to.
        remote_worker_name: the worker on the peer's side.
        forward_messages: extra message types forwarded from ``worker_name`` by source.
        serializer: the codec (default :class:`~fastapi_busproxy.JSONMessageSerializer`).
        forward_sources: sources accepted for inbound ``forward_messages`` types (default:
            ``remote_worker_name`` only).
        max_message_size: largest inbound message in bytes; larger closes with 1009.
        send_queue_size: messages queued for the peer before senders wait.
        send_timeout: seconds a full queue (or a stuck write) is tolerated before the link is
            closed with :attr:`CloseCode.PEER_TOO_SLOW`.
        max_bad_frames: refused messages in a row before the link is closed (1007 or 1008).
        ping_interval / ping_timeout: keepalive on framed links; nothing received for
            ``ping_interval + ping_timeout`` seconds closes with 1011. With plain (reference)
            clients, keepalive is the ASGI server's (uvicorn ``--ws-ping-interval``).
        batching: send every queued message in one WebSocket message on framed links.

    Events:
        ``on_client_connected(worker, websocket)``: the link is up and the proxy ready.
        ``on_client_disconnected(worker, websocket)``: the link is down (:attr:`close_info`
        says why).
    """

    EVENTS: ClassVar[tuple[str, ...]] = ("on_client_connected", "on_client_disconnected")
    _own_session: ClassVar[bool] = True

    def __init__(
        self,
        name: str,
        *,
        websocket: Any,
        worker_name: str,
        remote_worker_name: str,
        forward_messages: Iterable[type[BusMessage]] = (),
        serializer: MessageSerializer | None = None,
        forward_sources: Iterable[str] | None = None,
        max_message_size: int = 1_048_576,
        send_queue_size: int = 1000,
        send_timeout: float = 10.0,
        max_bad_frames: int = 10,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        batching: bool = True,
    ) -> None:
        if websocket is None:
            raise ConfigurationError("WebSocketProxyServer needs the endpoint's websocket")
        if worker_name == remote_worker_name:
            raise ConfigurationError(
                f"worker_name and remote_worker_name are both {worker_name!r}: a link joins"
                " two different workers"
            )
        super().__init__(
            name,
            local_worker=worker_name,
            remote_worker=remote_worker_name,
            forward_messages=forward_messages,
            serializer=serializer,
            outbound_needs_local_source=True,
            forward_sources=forward_sources,
            config=LinkConfig(
                max_message_size=max_message_size,
                send_timeout=send_timeout,
                max_bad_frames=max_bad_frames,
                ping_interval=ping_interval,
                ping_timeout=ping_timeout,
                batching=batching,
            ),
            outbox=Outbox(send_queue_size),
            active=True,
        )
        self.websocket = websocket
        self.worker_name = worker_name
        self.remote_worker_name = remote_worker_name
        self.close_info: CloseInfo | None = None
        self.subprotocol: str | None = None

    async def start(self) -> None:
        await super().start()
        websocket = self.websocket
        offered = list(websocket.scope.get("subprotocols") or ())
        wanted = choose_subprotocol(offered, self.serializer.content_type)
        in_band = False
        if _not_accepted(websocket):
            self.subprotocol = wanted
            await websocket.accept(subprotocol=self.subprotocol)
        elif wanted is not None:
            # The app accepted without a subprotocol (the reference page's form), and our
            # client offered one: upgrade in band (see .framing).
            self.subprotocol = wanted
            in_band = True
        framed = self.subprotocol is not None and not in_band
        link = self._new_link(
            StarletteTransport(websocket), framed=framed, app_keepalive=self.subprotocol is not None
        )
        if in_band:
            assert wanted is not None
            link.protocol.offer_upgrade(wanted)
        self._link = link
        self.spawn(self._run_link(link), name="link")
        await self.watch_workers(self.worker_name)
        client = websocket.scope.get("client")
        logger.info(
            "proxy %s: client %s connected (%s) for %s <-> %s",
            self.name,
            f"{client[0]}:{client[1]}" if client else "?",
            f"framed {self.subprotocol}{', upgraded in band' if in_band else ''}"
            if self.subprotocol
            else "plain format",
            self.worker_name,
            self.remote_worker_name,
        )
        await self._call_event_handler("on_client_connected", websocket)

    async def on_worker_ready(self, data: WorkerReadyData) -> None:
        link = self._link
        entry = self.runner.registry.entry(data.worker_name)
        if (
            entry is not None
            and entry.name == self.worker_name
            and link is not None
            and not link.closing
        ):
            self._announce(link, entry)

    @property
    def peer(self) -> str:
        """The client's address (``host:port``), for log lines."""
        client = getattr(self.websocket, "scope", {}).get("client")
        return f"{client[0]}:{client[1]}" if client else "?"

    async def _run_link(self, link: Link) -> None:
        info: CloseInfo | None = None
        try:
            info = await link.run()
        finally:
            self.close_info = info or CloseInfo(CloseCode.GOING_AWAY, "proxy stopped", True)
            self._link = None
            self._link_down()
            left = self._outbox.clear()
            self.stats.dropped += left
            if self.close_info.code == CloseCode.PEER_TOO_SLOW:
                self.stats.too_slow += 1
            _log_close(f"{self.name} (peer {self.peer})", self.close_info, left)
            await self._call_event_handler("on_client_disconnected", self.websocket)
        await self._cancel_now("connection closed")

    async def stop(self) -> None:
        """Stop the proxy: the connection closes with 1001.

        Called from outside, it stops the proxy (as for every worker). Idempotent.
        """
        await super().stop()
        link = self._link
        if link is not None:
            await link.close(CloseCode.GOING_AWAY, "proxy stopped")

    async def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Close the connection with ``code``; the proxy then finishes."""
        link = self._link
        if link is not None:
            await link.close(code, reason)


def _not_accepted(websocket: Any) -> bool:
    state = getattr(websocket, "application_state", None)
    return state is not None and getattr(state, "name", "") == "CONNECTING"


def _log_close(name: str, info: CloseInfo, left: int) -> None:
    lost = f"; {left} queued messages dropped" if left else ""
    if info.normal:
        logger.info("proxy %s: link closed (%d %s)%s", name, info.code, info.reason, lost)
    else:
        logger.warning("proxy %s: link closed (%d %s)%s", name, info.code, info.reason, lost)
