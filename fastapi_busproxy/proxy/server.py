"""WebSocketProxyServer: the server end of a link, on a Starlette/FastAPI WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

from .._flag import Flag
from ..closecodes import CloseCode
from ..exceptions import ConfigurationError
from ..messages import BusMessage
from ..registry import WorkerReadyData
from ..serializers import MessageSerializer
from ..worker import BaseWorker
from ._base import ProxyWorker
from ._link import Link
from ._outbox import Outbox
from ._transport import StarletteTransport
from .framing import (
    RESUME_HEADER,
    WINDOW_HEADER,
    choose_subprotocol,
    is_resumable,
    parse_resume_header,
    parse_window_header,
)
from .protocol import CloseInfo, LinkConfig
from .resume import DEFAULT_REPLAY_BUFFER, Persist, SessionState

__all__ = ["WebSocketProxyServer"]

logger = logging.getLogger("fastapi_busproxy.proxy")

# Connections that ended without either side meaning it: a resumable session waits for its
# client to come back. Any other close (the client left, the link was refused by policy, the
# proxy stopped) ends the session with the connection.
_DETACHING_CODES = frozenset(
    (1005, 1006, CloseCode.INTERNAL_ERROR, CloseCode.PEER_TOO_SLOW, CloseCode.SESSION_REPLACED)
)


SESSION_END_WAIT = 10.0
"""Seconds a newcomer under the name of a session that is ending (a proxy leaving its runner,
the plugin's session workers stopping) waits for it before it is refused."""


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
        resume_grace: seconds a resumable session outlives its connection (``None``, the
            default: the proxy ends with its connection). The plugin's routes set it from
            the settings (30 s) and hand a reconnecting client its session back
            (:meth:`resume`); a client of ours then negotiates the resumable subprotocol
            (in band on a socket the app accepted). In the reference page's form, the proxy
            a reconnecting client's endpoint makes under the same name is taken over by the
            one that kept the session (see ``docs/concepts.md``); the endpoint waits on
            :meth:`wait_connection`.
        replay_buffer_size: bytes sent and kept until acknowledged on a resumable link.

    A resumable session whose connection broke (no close frame, keepalive timeout, a peer too
    slow) is *detached*: the proxy stays, with the remote worker's registration, and keeps what
    is addressed to the remote worker in its send queue; when that is full, or the grace
    period passes, the session is given up (what it held is counted as dropped and logged).

    Events:
        ``on_client_connected(worker, websocket)``: the link is up and the proxy ready.
        ``on_client_disconnected(worker, websocket)``: the link is down (:attr:`close_info`
        says why).
        ``on_client_resumed(worker, websocket)``: a new connection resumed the session.
    """

    EVENTS: ClassVar[tuple[str, ...]] = (
        "on_client_connected",
        "on_client_disconnected",
        "on_client_resumed",
    )
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
        resume_grace: float | None = None,
        replay_buffer_size: int = DEFAULT_REPLAY_BUFFER,
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
        if resume_grace is not None and not resume_grace > 0:
            raise ConfigurationError(
                f"resume_grace must be > 0 seconds or None, not {resume_grace}"
            )
        self.resume_grace = resume_grace
        self._resume: SessionState | None = (
            SessionState(replay_buffer_size) if resume_grace is not None and batching else None
        )
        self._ending = False  # stopping, or the session given up: no more detaching
        self._taken_over: tuple[str, int, int, list[tuple[int, bytes]]] | None = None
        self._grace_timer: asyncio.TimerHandle | None = None
        # A link made and not yet run: the endpoint's task runs it (wait_connection()), or
        # else a task of the proxy's (see start()).
        self._unclaimed: Link | None = None
        # Hand-wired form: the proxy of the session this connection resumed (it serves the
        # connection; this one only follows it).
        self._leader: WebSocketProxyServer | None = None
        self._connection_ended = Flag()

    # -- sessions -----------------------------------------------------------------------------

    @property
    def resumable(self) -> bool:
        """Whether sessions outlive their connection here (``resume_grace`` and batching)."""
        return self._resume is not None

    def persist_sessions(self, persist: Persist) -> None:
        """Keep what the session sends elsewhere too: ``await persist(state, entries,
        receipts)`` stores ``entries`` (sequence numbers and serialized messages, in order)
        before any of them is written to the socket (``receipts``: of those that came from a
        durable stream, to acknowledge there in the same step), so that another instance can
        take the session over and send again what the client did not receive (the plugin
        passes its durable Redis bus's session directory). Call before the proxy starts."""
        if self._resume is None:
            raise ConfigurationError("persist_sessions() needs a resumable proxy (resume_grace)")
        self._persist = persist

    def take_over(
        self,
        session_id: str,
        peer_delivered: int,
        peer_acknowledged: int,
        sent: Sequence[tuple[int, bytes]] = (),
    ) -> None:
        """Serve, from the start, a session that another instance served until it died (the
        plugin calls this on a durable Redis bus, for a session Redis still knows).

        The client resumes it: it sends again what followed ``peer_acknowledged`` (what the
        other instance acknowledged, so had handed to the bus); of ``sent`` (what the other
        instance numbered and persisted, see :meth:`persist_sessions`), what followed
        ``peer_delivered`` (what the client received) is sent again with its numbers, and our
        numbering goes on after. Call before the proxy starts.
        """
        if self._resume is None:
            raise ConfigurationError("take_over() needs a resumable proxy (resume_grace)")
        self._taken_over = (session_id, peer_delivered, peer_acknowledged, list(sent))

    @property
    def session_id(self) -> str | None:
        """The resumable session's id, once a client of ours negotiated one."""
        if self._leader is not None:
            return self._leader.session_id
        session = self._resume
        return session.session if session is not None else None

    @property
    def session_open(self) -> bool:
        """The session goes on (its client away, or on another connection): neither given
        up, closed nor finished."""
        return not self._ending and not self.finished

    async def wait_connection(self) -> None:
        """Serve the connection until it ends: the endpoint's call.

        Called by the endpoint right after ``add_workers``, it runs the connection in the
        endpoint's own task (as Starlette's ``WebSocketEndpoint`` does; otherwise a task of
        the proxy's runs it), and cancelling it closes the connection with 1001, as
        cancelling the endpoint would. Called later, or elsewhere, it only waits.

        Without ``resume_grace`` the proxy finishes with its connection, as :meth:`wait`
        says. With it, the session may outlive the connection (it waits for its client in
        the runner, which gives it up after the grace period or stops it with the app): an
        endpoint waits here, not in :meth:`wait`, so that a dead connection does not keep
        its ASGI task (and the server's shutdown) waiting for the grace period.
        """
        link = self._unclaimed
        if link is not None:
            await self._serve(link)
            return
        if self._leader is not None or self._resume is None:
            await self.wait()
            return
        await self._connection_ended.wait()  # also set when the proxy stops

    @property
    def connected(self) -> bool:
        if self._leader is not None:
            return self._leader.connected and self._leader.websocket is self.websocket
        return super().connected

    @property
    def detached(self) -> bool:
        """The session waits for its client to reconnect (no connection now)."""
        return self._grace_timer is not None

    def can_resume(self, session_id: str, peer_delivered: int) -> bool:
        """Whether a client naming ``session_id`` (and what it delivered) can resume here."""
        session = self._resume
        return (
            session is not None
            and session.session is not None
            and secrets.compare_digest(session.session, session_id)
            and not self._ending
            and not self.finished
            and session.can_resume(peer_delivered)
        )

    async def resume(self, websocket: Any, peer_delivered: int) -> None:
        """Serve the session on ``websocket`` (a reconnection; see :meth:`can_resume`).

        A connection the session still has (half-open: the client saw it break first) is
        closed with 4002. Returns when the new connection ends.
        """
        link = await self._take_connection(websocket, peer_delivered)
        if link is not None:
            await self._serve(link)

    async def _take_connection(self, websocket: Any, peer_delivered: int) -> Link | None:
        """Resume on ``websocket``: its link, for the caller to run (:meth:`_serve`), or
        ``None`` when it was refused."""
        subprotocol = choose_subprotocol(
            websocket.scope.get("subprotocols") or (), self.serializer.content_type, resume=True
        )
        in_band = not _not_accepted(websocket)  # accepted by the app: upgrade in band
        if not in_band:
            await websocket.accept(subprotocol=subprotocol)
        if not is_resumable(subprotocol):
            await websocket.close(CloseCode.PROTOCOL_ERROR, "resuming needs the v2 subprotocol")
            return None
        if self._link is not None:
            await self._link.close(CloseCode.SESSION_REPLACED, "resumed on a new connection")
            await self._connection_ended.wait()
        if not self.can_resume(self.session_id or "", peer_delivered):
            await websocket.close(CloseCode.TRY_AGAIN_LATER, "session ended meanwhile")
            return None
        if self._grace_timer is not None:
            self._grace_timer.cancel()
            self._grace_timer = None
        self.websocket = websocket
        self.subprotocol = subprotocol
        self.stats.resumes += 1
        link = self._connect(
            websocket, in_band=in_band, resumed=True, peer_delivered=peer_delivered
        )
        entry = self.runner.registry.entry(self.worker_name)
        if entry is not None:
            self._announce(link, entry)
        await self._call_event_handler("on_client_resumed", websocket)
        return link

    # -- the hand-wired form: a reconnecting client's new proxy --------------------------------

    async def _make_way_for(self, newcomer: BaseWorker) -> bool:
        # The endpoint of the reference page makes a proxy per connection under one name. A
        # client of ours reconnecting to resume this session: this proxy serves its new
        # connection, and the newcomer follows it (its wait() returns when that connection
        # ends). Anyone else replaces a session that waits for its client.
        if not isinstance(newcomer, WebSocketProxyServer):
            return False
        if not self.session_open:
            # Ending (its connection closed): the name is free once it has left the runner.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.wait(), SESSION_END_WAIT)
            return False
        if self._resume is None:
            return False
        resume = parse_resume_header(_header(newcomer.websocket, RESUME_HEADER))
        if (
            resume is not None
            and newcomer.worker_name == self.worker_name
            and newcomer.remote_worker_name == self.remote_worker_name
            and self.can_resume(*resume)
        ):
            newcomer._leader = self
            newcomer.stats = self.stats
            self.spawn(self._serve_follower(newcomer, resume[1]), name="resume")
            return True
        if self.detached:
            logger.info("proxy %s: a new client replaces the waiting session", self.name)
            await self.end_session("replaced by a new connection")
        return False

    async def _serve_follower(self, follower: WebSocketProxyServer, peer_delivered: int) -> None:
        try:
            link = await self._take_connection(follower.websocket, peer_delivered)
            if link is not None:
                await follower._call_event_handler("on_client_connected", follower.websocket)
                await self._serve(link)
                follower.close_info = self.close_info
                await follower._call_event_handler("on_client_disconnected", follower.websocket)
        finally:
            follower._finished.set()

    async def end_session(self, reason: str) -> None:
        """Give the session up now (a detached one, replaced by a new client); the proxy
        finishes."""
        self._give_up(reason)
        await self.wait()

    def _detach(self, info: CloseInfo) -> None:
        assert self.resume_grace is not None
        logger.info(
            "proxy %s: client %s gone (%d %s); its session is kept %.0fs for it to resume",
            self.name,
            self.peer,
            info.code,
            info.reason,
            self.resume_grace,
        )
        loop = asyncio.get_running_loop()
        self._grace_timer = loop.call_later(self.resume_grace, self._give_up, "grace period over")

    def _give_up(self, reason: str) -> None:
        if self._ending:
            return
        self._lose_session(reason)
        self.spawn(self._cancel_now(reason), name="give-up")

    def _lose_session(self, reason: str) -> None:
        """The detached session ends without its client: count and log what it held."""
        self._ending = True
        if self._grace_timer is not None:
            self._grace_timer.cancel()
            self._grace_timer = None
        session = self._resume
        unacknowledged = session.lose() if session is not None else 0
        queued = self._outbox.clear()
        self.stats.sessions_lost += 1
        self.stats.lost_unacknowledged += unacknowledged
        self.stats.dropped += queued + unacknowledged
        logger.warning(
            "proxy %s: session given up (%s): %d queued and %d unacknowledged messages for %s"
            " dropped",
            self.name,
            reason,
            queued,
            unacknowledged,
            self.remote_worker_name,
        )
        self._link_down()

    def _hold(self, message: BusMessage) -> None:
        # No connection to write to (or one closing): a resumable session keeps the message
        # for its client's return, until the send queue is full.
        resume = self._resume
        if resume is not None and resume.session is not None and not self._ending:
            if self._outbox.put_nowait(message):
                return
            self._give_up("send queue full while the client was away")
        super()._hold(message)

    # -- connections --------------------------------------------------------------------------

    def _connect(
        self,
        websocket: Any,
        *,
        in_band: bool = False,
        resumed: bool = False,
        peer_delivered: int = 0,
    ) -> Link:
        """The link on the accepted ``websocket``, for :meth:`_serve`: framed in
        :attr:`subprotocol` (from the handshake, or ``in_band`` after our marker; see
        :mod:`.framing`), plain without one."""
        subprotocol = self.subprotocol
        session = self._resume if is_resumable(subprotocol) else None
        link = self._new_link(
            StarletteTransport(websocket),
            framed=subprotocol is not None and not in_band,
            app_keepalive=subprotocol is not None,
            session=session,
        )
        if in_band:
            assert subprotocol is not None
            link.protocol.offer_upgrade(subprotocol)
        if session is not None:
            session.peer_window = parse_window_header(_header(websocket, WINDOW_HEADER))
            link.protocol.welcome(resumed=resumed, peer_delivered=peer_delivered)
        self._connection_ended.clear()
        self._link = self._unclaimed = link
        return link

    async def _serve(self, link: Link) -> None:
        """Run ``link`` in the calling task, unless a task already runs it: then wait for its
        connection to end."""
        if self._unclaimed is not link:
            await self._connection_ended.wait()
            return
        self._unclaimed = None
        await self._run_link(link)

    def _run_unclaimed(self, link: Link) -> None:
        # No endpoint runs the connection in its own task (it called wait(), or nothing):
        # a task of the proxy's does.
        if self._unclaimed is link:
            self._unclaimed = None
            self.spawn(self._run_link(link), name="link")

    async def start(self) -> None:
        await super().start()
        websocket = self.websocket
        offered = list(websocket.scope.get("subprotocols") or ())
        content_type = self.serializer.content_type
        self.subprotocol = choose_subprotocol(
            offered, content_type, resume=self._resume is not None
        )
        # Accepted by the app without a subprotocol (the reference page's form): if our
        # client offered one, upgrade in band (see .framing).
        in_band = self.subprotocol is not None and not _not_accepted(websocket)
        if _not_accepted(websocket):
            await websocket.accept(subprotocol=self.subprotocol)
        taken = self._taken_over if is_resumable(self.subprotocol) else None
        if taken is not None:
            assert self._resume is not None
            self._resume.take_over(*taken)
            self.stats.resumes += 1
            link = self._connect(websocket, in_band=in_band, resumed=True, peer_delivered=taken[1])
        else:
            if is_resumable(self.subprotocol):
                assert self._resume is not None
                self._resume.session = secrets.token_urlsafe(16)
            link = self._connect(websocket, in_band=in_band)
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
        # The endpoint that added the proxy runs its connection, in the endpoint's own task,
        # when it calls wait_connection() at once; else a task of the proxy's, made now.
        asyncio.get_running_loop().call_soon(self._run_unclaimed, link)

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
        keep = False
        try:
            info = await link.run()
        finally:
            self.close_info = info or CloseInfo(CloseCode.GOING_AWAY, "proxy stopped", True)
            self._link = None
            if self.close_info.code == CloseCode.PEER_TOO_SLOW:
                self.stats.too_slow += 1
            keep = (
                link.protocol.session is not None
                and not self._ending
                and self.close_info.code in _DETACHING_CODES
            )
            if keep:
                if self.close_info.code != CloseCode.SESSION_REPLACED:
                    self._detach(self.close_info)
            else:
                self._ending = True
                self._link_down()
                left = self._outbox.clear()
                if self._resume is not None:
                    left += self._resume.lose()
                self.stats.dropped += left
                _log_close(f"{self.name} (peer {self.peer})", self.close_info, left)
            self._connection_ended.set()
            await self._call_event_handler("on_client_disconnected", self.websocket)
            if not keep:
                # Also when the task running the link (an endpoint's) is cancelled.
                await self._cancel_now("connection closed")

    async def stop(self) -> None:
        """Stop the proxy: the connection closes with 1001.

        Called from outside, it stops the proxy (as for every worker); a session waiting
        for its client is given up. Idempotent.
        """
        if self.detached and not self._ending:
            self._lose_session("proxy stopped")
        self._ending = True
        if self._grace_timer is not None:
            self._grace_timer.cancel()
            self._grace_timer = None
        await super().stop()
        link = self._link
        if link is not None:
            await link.close(CloseCode.GOING_AWAY, "proxy stopped")
        self._connection_ended.set()

    async def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Close the connection with ``code``; the proxy (and its session) then finishes."""
        leader = self._leader
        if leader is not None:
            if leader.websocket is self.websocket:
                await leader.close(code, reason)
            return
        if self.detached:
            self._give_up(reason or f"closed with {code}")
            return
        self._ending = True
        link = self._link
        if link is not None:
            await link.close(code, reason)


def _header(websocket: Any, name: str) -> str | None:
    """A handshake header of ``websocket`` (``None`` if absent)."""
    headers = getattr(websocket, "headers", None)
    return headers.get(name) if headers else None


def _not_accepted(websocket: Any) -> bool:
    state = getattr(websocket, "application_state", None)
    return state is not None and getattr(state, "name", "") == "CONNECTING"


def _log_close(name: str, info: CloseInfo, left: int) -> None:
    lost = f"; {left} queued messages dropped" if left else ""
    if info.normal:
        logger.info("proxy %s: link closed (%d %s)%s", name, info.code, info.reason, lost)
    else:
        logger.warning("proxy %s: link closed (%d %s)%s", name, info.code, info.reason, lost)
