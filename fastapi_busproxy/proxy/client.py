"""WebSocketProxyClient: the client end of a link, with reconnect and an outbox."""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

from .._flag import Flag
from ..closecodes import CloseCode
from ..exceptions import ConfigurationError, HandshakeRejectedError
from ..messages import BusMessage
from ..registry import WorkerReadyData
from ..serializers import MessageSerializer
from ._base import ProxyWorker
from ._outbox import Outbox
from ._transport import WebsocketsTransport
from .framing import (
    RESUME_HEADER,
    WINDOW_HEADER,
    format_resume_header,
    is_resumable,
    subprotocols_for,
)
from .protocol import CloseInfo, LinkConfig, SessionOutcome
from .reconnect import ReconnectPolicy
from .resume import DEFAULT_REPLAY_BUFFER, SessionState

__all__ = ["HeadersProvider", "WebSocketProxyClient"]

logger = logging.getLogger("fastapi_busproxy.proxy")

HeadersProvider = (
    Mapping[str, str] | Callable[[], Mapping[str, str]] | Callable[[], Awaitable[Mapping[str, str]]]
)
"""Handshake headers: a mapping, or a callable (sync or async) called at every connect."""


class WebSocketProxyClient(ProxyWorker):
    """Connects to a WebSocket URL and bridges a local worker with a remote one.

    Sends the peer the messages targeted at ``remote_worker_name``, plus the
    ``forward_messages`` types sent by ``local_worker_name``; lets in the messages from
    ``remote_worker_name`` targeted at ``local_worker_name`` (see
    :mod:`fastapi_busproxy.proxy.forwarding`). The proxy receives the bus when it is added to a
    runner; it connects when activated (``active=True``: as soon as it starts).

    When the connection is lost it reconnects with exponential backoff and jitter
    (``reconnect``); a handshake refused with HTTP 401 or 403 stops retrying and fires
    ``on_gave_up``. While disconnected, messages for the remote worker wait in a bounded
    outbox (``outbox_size`` messages, ``outbox_max_age`` seconds; the oldest are dropped and
    counted) that is flushed, in order, on reconnect.

    **Resume.** Against our own server (``include_bus_proxy``), the link is resumable: every
    message is numbered and kept until the server acknowledges it, and a client that
    reconnects within the server's grace period resumes its session: both sides send again
    what the other did not get, drop what they already delivered, and keep the order (exactly
    once, in order, across cuts). When the session could not be resumed (the grace period
    passed, the server restarted), ``on_session_lost`` says how many messages sent were never
    acknowledged: for them, delivery was at most once. Against a reference server, or with
    ``resume=False``, messages written just before a connection broke may be lost.

    Deactivating closes the connection (1000); stopping closes it with 1001. Activating again
    replaces the connection without leaking the old one.

    Args:
        name: unique worker name of this proxy.
        url: ``ws://`` or ``wss://`` URL of the server endpoint, or a list of them (the
            instances of one app): a connection that cannot be made to one is tried at once
            on the next, and the backoff applies when all have failed in turn. A session
            resumes on another instance when the app runs a durable Redis bus.
        remote_worker_name: the worker on the server's side.
        local_worker_name: the local worker the server talks to.
        forward_messages: extra message types forwarded from ``local_worker_name`` by source.
        headers: handshake headers, or a callable (sync or async) returning them, called at
            every connect (for tokens that expire).
        serializer: the codec (default :class:`~fastapi_busproxy.JSONMessageSerializer`).
        active: connect as soon as the proxy starts (default ``False``: on activation).
        forward_sources: sources accepted for inbound ``forward_messages`` types.
        reconnect: the :class:`ReconnectPolicy` (default: 0.5 s doubling to 30 s, forever).
        open_timeout: seconds allowed for the TCP + TLS + WebSocket handshake.
        ping_interval / ping_timeout: WebSocket keepalive pings (``None`` disables).
        max_message_size: largest inbound message; larger closes with 1009.
        send_queue_size: the outbox size: messages queued while connected (senders then wait
            up to ``send_timeout``) or while disconnected (the oldest are then dropped).
        outbox_max_age: seconds a message may wait in the outbox while disconnected.
        send_timeout: seconds a full queue or a stuck write is tolerated before the link is
            closed with :attr:`CloseCode.PEER_TOO_SLOW` (and reconnected).
        max_bad_frames: refused messages in a row before the link is closed (1007 or 1008).
        compression: ``"deflate"`` for permessage-deflate, ``None`` (default) for none.
        batching: offer the framed subprotocol (batching, keepalive); a reference server
            ignores the offer and the plain format is used.
        resume: offer the resumable subprotocol (see above); needs ``batching``.
        replay_buffer_size: bytes sent and kept until acknowledged on a resumable link; when
            full, nothing new is sent until acknowledgements come (senders wait).

    Events:
        ``on_connected(worker, websocket)``, ``on_disconnected(worker, websocket)``;
        ``on_reconnecting(worker, attempt, delay)``: a connect failed or the link dropped,
        the next try comes in ``delay`` seconds;
        ``on_gave_up(worker, error)``: no more tries (``error`` is a
        :class:`HandshakeRejectedError` for 401/403, else the last connect error);
        ``on_resumed(worker)``: a new connection resumed the session, nothing lost;
        ``on_session_lost(worker, lost)``: a new connection could not resume the session;
        ``lost`` messages sent in it were never acknowledged.
    """

    _client_end: ClassVar[bool] = True
    EVENTS: ClassVar[tuple[str, ...]] = (
        "on_connected",
        "on_disconnected",
        "on_reconnecting",
        "on_gave_up",
        "on_resumed",
        "on_session_lost",
    )

    def __init__(
        self,
        name: str,
        *,
        url: str | Sequence[str],
        remote_worker_name: str,
        local_worker_name: str,
        forward_messages: Iterable[type[BusMessage]] = (),
        headers: HeadersProvider | None = None,
        serializer: MessageSerializer | None = None,
        active: bool = False,
        forward_sources: Iterable[str] | None = None,
        reconnect: ReconnectPolicy | None = None,
        open_timeout: float | None = 10.0,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        max_message_size: int = 1_048_576,
        send_queue_size: int = 1000,
        outbox_max_age: float | None = 60.0,
        send_timeout: float = 10.0,
        max_bad_frames: int = 10,
        compression: str | None = None,
        batching: bool = True,
        resume: bool = True,
        replay_buffer_size: int = DEFAULT_REPLAY_BUFFER,
    ) -> None:
        urls = (url,) if isinstance(url, str) else tuple(url)
        if not urls:
            raise ConfigurationError("url must be a ws:// or wss:// URL, or a list of them")
        for one in urls:
            if not isinstance(one, str) or not one.startswith(("ws://", "wss://")):
                raise ConfigurationError(f"url must be a ws:// or wss:// URL, not {one!r}")
        if local_worker_name == remote_worker_name:
            raise ConfigurationError(
                f"local_worker_name and remote_worker_name are both {local_worker_name!r}:"
                " a link joins two different workers"
            )
        if compression not in (None, "deflate"):
            raise ConfigurationError('compression must be "deflate" or None')
        super().__init__(
            name,
            local_worker=local_worker_name,
            remote_worker=remote_worker_name,
            forward_messages=forward_messages,
            serializer=serializer,
            outbound_needs_local_source=False,
            forward_sources=forward_sources,
            config=LinkConfig(
                max_message_size=max_message_size,
                send_timeout=send_timeout,
                max_bad_frames=max_bad_frames,
                ping_interval=ping_interval,
                ping_timeout=ping_timeout,
                batching=batching,
            ),
            outbox=Outbox(send_queue_size, outbox_max_age),
            active=active,
        )
        self.urls = urls
        self._url_index = 0
        self.remote_worker_name = remote_worker_name
        self.local_worker_name = local_worker_name
        self.headers = headers
        self.reconnect_policy = reconnect or ReconnectPolicy()
        self.open_timeout = open_timeout
        self.compression = compression
        self.batching = batching
        self.close_info: CloseInfo | None = None
        self.subprotocol: str | None = None
        self._connector: asyncio.Task[None] | None = None
        self._connections = 0
        self._rng = random.Random()
        self._said_inactive = False
        self._outage_failures = 0  # failed connection attempts since the link was last up
        self._resume = SessionState(replay_buffer_size) if resume and batching else None
        self._drained_flag = Flag()

    @property
    def unacknowledged(self) -> int:
        """Messages sent on the resumable session that the server has not acknowledged."""
        return self._resume.unacknowledged if self._resume is not None else 0

    async def wait_acknowledged(self) -> None:
        """Wait until the server has acknowledged every message sent or queued so far (or
        ``on_session_lost`` counted it as lost).

        For a script that must not exit before its messages are safe on the other side. Only
        resumable links acknowledge: raises :class:`ConfigurationError` with ``resume=False``.
        Use it under a timeout: a server that is away never acknowledges.
        """
        if self._resume is None:
            raise ConfigurationError("wait_acknowledged() needs a resumable link (resume=True)")
        while self.queued or self._resume.unacknowledged:
            self._drained_flag.clear()
            await self._drained_flag.wait()

    def _drained(self) -> None:
        self._drained_flag.set()

    @property
    def session_id(self) -> str | None:
        """The resumable session the server gave this client (``None`` before or without)."""
        return self._resume.session if self._resume is not None else None

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        # Created active (``active=True``), the activation at start connects.
        await super().start()
        await self.watch_workers(self.local_worker_name)
        if not self.active:
            logger.info(
                "proxy %s: not active, so not connecting to %s until it is activated"
                " (activate_worker(%r), or active=True)",
                self.name,
                self.url,
                self.name,
            )

    async def on_activated(self, args: dict[str, Any] | None) -> None:
        await self._start_connecting()

    async def on_deactivated(self) -> None:
        await self._stop_connecting(CloseCode.NORMAL_CLOSURE, "deactivated")

    async def stop(self) -> None:
        """Stop the proxy: the connection closes with 1001 and reconnecting stops.

        Called from outside, it stops the proxy (as for every worker).
        """
        await super().stop()
        await self._stop_connecting(CloseCode.GOING_AWAY, "proxy stopped")

    async def connect(self) -> None:
        """Start connecting now (as an activation would); a current connection is replaced."""
        await self._start_connecting()

    async def _give_up(self, error: BaseException) -> None:
        """The link will not come back by itself: whoever waits for the remote worker (a job,
        a readiness wait) fails at once with ``error`` as the cause, not with a timeout."""
        self.runner.registry.mark_unreachable(self.remote_worker_name, error)
        await self._call_event_handler("on_gave_up", error)

    async def _start_connecting(self) -> None:
        self.runner.registry.clear_unreachable(self.remote_worker_name)
        await self._stop_connecting(CloseCode.NORMAL_CLOSURE, "reconnecting")
        self._connector = self.spawn(self._connect_loop(), name="connect")

    async def _stop_connecting(self, code: int, reason: str) -> None:
        task, self._connector = self._connector, None
        link = self._link
        if link is not None:
            await link.close(code, reason)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.wait((task,))

    # -- connecting ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The server's URL this proxy connects (or last connected) to: of :attr:`urls`, the
        one in turn."""
        return self.urls[self._url_index]

    @url.setter
    def url(self, value: str) -> None:
        self.urls = (value,)
        self._url_index = 0

    async def _connect_loop(self) -> None:
        policy = self.reconnect_policy
        attempt = 0
        tried_in_turn = 0  # URLs of the list that failed since the last backoff
        while True:
            try:
                connection = await self._open()
            except HandshakeRejectedError as exc:
                logger.error("proxy %s: %s; not retrying", self.name, exc)
                await self._give_up(exc)
                return
            except ConfigurationError as exc:
                logger.error("proxy %s: %s", self.name, exc)
                await self._give_up(exc)
                return
            except Exception as exc:  # refused, unreachable, timed out, bad status: retry
                if len(self.urls) > 1:
                    # The next instance of the list, at once; the whole list failed: back off.
                    self._url_index = (self._url_index + 1) % len(self.urls)
                    tried_in_turn += 1
                    if tried_in_turn < len(self.urls):
                        logger.warning(
                            "proxy %s: cannot connect to %s (%s: %s); trying %s",
                            self.name,
                            self.urls[self._url_index - 1],
                            type(exc).__name__,
                            exc,
                            self.url,
                        )
                        continue
                    tried_in_turn = 0
                attempt += 1
                if not policy.should_retry(attempt):
                    logger.error(
                        "proxy %s: giving up on %s after %d attempts: %s",
                        self.name,
                        self.url,
                        attempt,
                        exc,
                    )
                    await self._give_up(exc)
                    return
                delay = policy.delay(attempt, self._rng.random())
                # Once per outage at WARNING, with the cause; each retry after at DEBUG.
                first = self._outage_failures == 0
                self._outage_failures += 1
                logger.log(
                    logging.WARNING if first else logging.DEBUG,
                    "proxy %s: cannot connect to %s (%s: %s); retry %d in %.2fs%s",
                    self.name,
                    self.url,
                    type(exc).__name__,
                    exc,
                    attempt,
                    delay,
                    ", and on (logged again when connected)" if first else "",
                )
                await self._call_event_handler("on_reconnecting", attempt, delay)
                await asyncio.sleep(delay)
                continue
            tried_in_turn = 0  # connected: the next outage tries the whole list at once again
            if self._outage_failures:
                logger.warning(
                    "proxy %s: connected to %s again after %d failed attempts",
                    self.name,
                    self.url,
                    self._outage_failures,
                )
                self._outage_failures = 0
            received = self.stats.bytes_in
            info = await self._run_connection(connection)
            if info.by_us and info.code in (CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY):
                return
            if info.code == CloseCode.WRONG_WORKER:
                # The two sides name the workers differently: no retry fixes that.
                mismatch = ConfigurationError(
                    f"{self.url}: worker names do not match ({info.reason}); this proxy has"
                    f" local_worker_name={self.local_worker_name!r},"
                    f" remote_worker_name={self.remote_worker_name!r}"
                )
                logger.error("proxy %s: %s; not retrying", self.name, mismatch)
                await self._give_up(mismatch)
                return
            # The link dropped. After a connection that served, try again after the first
            # backoff step; after a refusal (a duplicate session...), back off further.
            attempt = policy.next_attempt(
                attempt, code=info.code, served=self.stats.bytes_in > received
            )
            if not policy.should_retry(attempt):
                error = ConnectionError(
                    f"{self.url} closed the link {attempt} times in a row"
                    f" ({info.code} {info.reason})"
                )
                logger.error("proxy %s: giving up: %s", self.name, error)
                await self._give_up(error)
                return
            delay = policy.delay(attempt, self._rng.random())
            await self._call_event_handler("on_reconnecting", attempt, delay)
            await asyncio.sleep(delay)

    async def _open(self) -> Any:
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidStatus, InvalidURI

        headers = await self._resolve_headers()
        session = self._resume
        if session is not None and session.session is not None:
            headers = {
                **(headers or {}),
                RESUME_HEADER: format_resume_header(
                    session.session, session.delivered, session.peer_acked
                ),
            }
        offered = self._offered()
        if session is not None and offered:
            # What the server may send us unacknowledged (see framing.WINDOW_HEADER).
            headers = {**(headers or {}), WINDOW_HEADER: str(session.limit)}
        try:
            return await connect(
                self.url,
                additional_headers=headers,
                subprotocols=offered or None,  # type: ignore[arg-type]
                open_timeout=self.open_timeout,
                ping_interval=self.link_config.ping_interval,
                ping_timeout=self.link_config.ping_timeout,
                max_size=self.link_config.max_message_size,
                compression="deflate" if self.compression else None,
                close_timeout=5,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if ReconnectPolicy.is_fatal_status(status):
                hint = (
                    "check the credentials in headers, and the URL's path: Starlette answers"
                    " a path with no WebSocket route with 403 too"
                    if status == 403
                    else "check the credentials in headers"
                )
                raise HandshakeRejectedError(
                    f"{self.url} refused the handshake with HTTP {status} ({hint})",
                    status_code=status,
                ) from exc
            raise
        except InvalidURI as exc:
            raise ConfigurationError(f"invalid url {self.url!r}: {exc}") from exc

    async def _resolve_headers(self) -> Mapping[str, str] | None:
        headers = self.headers
        if headers is None or isinstance(headers, Mapping):
            return headers
        value = headers()
        if inspect.isawaitable(value):
            value = await value
        return value

    def _offered(self) -> list[str]:
        if not self.batching:
            return []
        return subprotocols_for(self.serializer.content_type, resume=self._resume is not None)

    async def _run_connection(self, connection: Any) -> CloseInfo:
        offered = self._offered()
        self.subprotocol = connection.subprotocol
        framed = self.subprotocol is not None and self.subprotocol in offered
        resumable = framed and is_resumable(self.subprotocol)
        # A server that accepted without a subprotocol may still upgrade in band, and take
        # the session up then (see LinkProtocol.expect_upgrade).
        in_band = bool(offered) and not framed
        if (
            not resumable
            and not in_band
            and self._resume is not None
            and self._resume.session is not None
        ):
            # A server that no longer offers resume: the session cannot go on.
            previous = self._resume.session
            lost = self._resume.lose()
            self.stats.sessions_lost += 1
            self.stats.lost_unacknowledged += lost
            await self._session_outcome(SessionOutcome("", False, lost, previous))
        link = self._new_link(
            WebsocketsTransport(connection),
            framed=framed,
            app_keepalive=False,
            session=self._resume if resumable else None,
            resumable=in_band and self._resume is not None,
        )
        if in_band:
            link.protocol.expect_upgrade(offered, self._resume)
        self._link = link
        if self._connections:
            self.stats.reconnects += 1
        self._connections += 1
        logger.info(
            "proxy %s: connected to %s (%s)",
            self.name,
            self.url,
            f"framed {self.subprotocol}" if framed else "plain format",
        )
        entry = self.runner.registry.entry(self.local_worker_name)
        if entry is not None:
            # Targeted at the remote worker: a reference server drops untargeted messages.
            self._announce(link, entry, self.remote_worker_name)
        await self._call_event_handler("on_connected", connection)
        info: CloseInfo | None = None
        try:
            info = await link.run()
        finally:
            self.close_info = info or CloseInfo(CloseCode.GOING_AWAY, "proxy stopped", True)
            self._link = None
            self._link_down()
            latency = getattr(connection, "latency", None)
            if latency:
                self.stats.last_rtt = latency
            if self.close_info.code == CloseCode.PEER_TOO_SLOW:
                self.stats.too_slow += 1
            if self.close_info.code == CloseCode.MESSAGE_TOO_BIG:
                self.stats.oversized += 1
            on_purpose = self.close_info.code in (CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY)
            if link.protocol.session is not None and self.close_info.by_us and on_purpose:
                self._end_session()
            level = logging.INFO if self.close_info.normal else logging.WARNING
            logger.log(
                level,
                "proxy %s: disconnected from %s (%d %s)",
                self.name,
                self.url,
                self.close_info.code,
                self.close_info.reason,
            )
            await self._call_event_handler("on_disconnected", connection)
        return info

    def _end_session(self) -> None:
        """We closed on purpose: the server ends the session too; start the next one afresh."""
        assert self._resume is not None
        previous = self._resume.session
        lost = self._resume.lose()
        if lost:
            self.stats.lost_unacknowledged += lost
            logger.warning(
                "proxy %s: closed session %s with %d messages not yet acknowledged",
                self.name,
                previous,
                lost,
            )

    async def _session_outcome(self, outcome: SessionOutcome) -> None:
        if outcome.resumed:
            logger.info("proxy %s: resumed session %s", self.name, outcome.session)
            await self._call_event_handler("on_resumed")
        elif outcome.previous is not None:
            logger.warning(
                "proxy %s: session %s could not be resumed (the server no longer has it); %d"
                " messages sent in it were never acknowledged and may be lost",
                self.name,
                outcome.previous,
                outcome.lost,
            )
            await self._call_event_handler("on_session_lost", outcome.lost)

    # -- forwarding ---------------------------------------------------------------------------

    def _hold(self, message: BusMessage) -> None:
        if not self.active and not self._said_inactive:
            # The reference's default (active=False) is easy to miss: say so, once.
            self._said_inactive = True
            logger.warning(
                "proxy %s: %s for %s waits in the outbox: the proxy is not active, so it does"
                " not connect (activate_worker(%r), or active=True)",
                self.name,
                type(message).__name__,
                self.remote_worker_name,
                self.name,
            )
        dropped = self._outbox.put_dropping_oldest(message)
        if dropped:
            self.stats.dropped += dropped
            if self._outbox.overflowed == dropped or self._outbox.overflowed % 1000 == 0:
                logger.warning(
                    "proxy %s: outbox full (%d) while disconnected; dropped the oldest (%d so far)",
                    self.name,
                    self._outbox.max_size,
                    self._outbox.overflowed,
                )

    async def on_worker_ready(self, data: WorkerReadyData) -> None:
        link = self._link
        entry = self.runner.registry.entry(data.worker_name)
        if (
            entry is not None
            and entry.name == self.local_worker_name
            and link is not None
            and not link.closing
        ):
            # Targeted at the remote worker: a reference server drops untargeted messages.
            self._announce(link, entry, self.remote_worker_name)
