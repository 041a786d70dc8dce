"""WebSocket routes that bridge each connection to the app's shared bus.

::

    app = FastAPI()
    app.include_router(
        bus_proxy_router("/ws", worker_name="assistant", remote_worker_name="voice",
                         dependencies=[Depends(BearerTokenAuth())])
    )
    # or, in one call:
    include_bus_proxy(app, "/ws", "assistant", remote_worker_name="voice")

Each accepted connection gets a :class:`~fastapi_busproxy.proxy.server.WebSocketProxyServer`
on the app's runner (see :mod:`fastapi_busproxy.lifespan`); when the connection ends, the proxy
and the session's workers are removed.

The route's dependencies run before the WebSocket is accepted: a dependency that raises
``HTTPException`` answers the handshake with that HTTP status (the ready-made
:mod:`~fastapi_busproxy.security` dependencies answer 403), and nothing reaches the bus.

**Many sessions.** ``worker_name`` and ``remote_worker_name`` may be callables of the
:class:`BusSession` (its path parameters, its authenticated ``identity``), so two clients do
not collide. A connection for a remote worker name that is already connected is handled by
``duplicate_policy``: ``"refuse"`` (the default) accepts and closes the newcomer with
:attr:`~fastapi_busproxy.closecodes.CloseCode.DUPLICATE_SESSION` (4001); ``"replace"`` closes
the older link with :attr:`~fastapi_busproxy.closecodes.CloseCode.SESSION_REPLACED` (4002) and
serves the newcomer. ``session_workers`` creates workers (for example one assistant per caller)
that live and die with the session.

**Resumable sessions.** With a client of ours, a session outlives a broken connection by
``resume_grace`` seconds (settings, 30 s by default): its proxy, its session workers, the
remote worker's registration and what is addressed to it stay, and a client that reconnects
within the grace period naming the session (its ``x-busproxy-resume`` header) gets it back on
the new connection, with nothing lost or duplicated (see :mod:`fastapi_busproxy.proxy.resume`).
The duplicate policy applies to sessions, not sockets: a reconnection that resumes its
own session is no duplicate, and a newcomer that does not resume replaces a session that is
waiting for its client, whatever the policy.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, WebSocket
from fastapi.params import Depends as DependsParam
from starlette.responses import Response

from ._flag import Flag
from .closecodes import CloseCode
from .exceptions import ConfigurationError
from .lifespan import _state, bus_lifespan, runner_of
from .messages import BusMessage
from .proxy.framing import RESUME_HEADER, parse_resume_acknowledged, parse_resume_header
from .proxy.server import SESSION_END_WAIT, WebSocketProxyServer
from .runner import RunnerState, WorkerRunner
from .serializers import MessageSerializer
from .session import WorkerSession
from .worker import BaseWorker

__all__ = ["BusSession", "bus_proxy_router", "include_bus_proxy"]

_session_ids = itertools.count(1)


if TYPE_CHECKING:
    from .redis.sessions import SessionDirectory

logger = logging.getLogger(__name__)

NameSource = str | Callable[["BusSession"], str | Awaitable[str]]
"""A worker name, or a callable (sync or async) that derives it from the session."""

SessionWorkers = Callable[["BusSession"], Iterable[BaseWorker] | Awaitable[Iterable[BaseWorker]]]


@dataclass
class BusSession:
    """One accepted connection of a bus proxy route.

    Attributes:
        websocket: the connection.
        identity: what the route's ``identity`` dependency returned (``None`` without one).
        runner: the app's shared runner.
        worker_name / remote_worker_name: the names this session uses, once resolved.
        proxy: the session's proxy, once created.
    """

    websocket: WebSocket
    identity: Any
    runner: WorkerRunner
    worker_name: str = ""
    remote_worker_name: str = ""
    proxy: WebSocketProxyServer | None = None

    @property
    def path_params(self) -> dict[str, Any]:
        return dict(self.websocket.path_params)


@dataclass
class _Session:
    proxy: WebSocketProxyServer | None = None
    done: Flag = field(default_factory=Flag)
    # A durable Redis bus's session directory, and the session recorded there.
    directory: SessionDirectory | None = None
    recorded: str | None = None
    runner: WorkerRunner | None = None
    # A durable Redis bus, and the remote worker it sends through its stream for the session.
    through_stream: tuple[Any, str] | None = None


@dataclass(frozen=True)
class _Route:
    worker_name: NameSource
    remote_worker_name: NameSource
    forward_messages: tuple[type[BusMessage], ...]
    serializer: MessageSerializer | None
    name: str
    session_workers: SessionWorkers | None
    duplicate_policy: Literal["refuse", "replace"] | None
    proxy_options: dict[str, Any]


async def _no_identity() -> None:
    return None


def bus_proxy_router(
    path: str,
    *,
    worker_name: NameSource,
    remote_worker_name: NameSource,
    dependencies: Sequence[DependsParam] | None = None,
    forward_messages: Iterable[type[BusMessage]] = (),
    serializer: MessageSerializer | None = None,
    name: str = "gateway",
    identity: Callable[..., Any] | None = None,
    session_workers: SessionWorkers | None = None,
    duplicate_policy: Literal["refuse", "replace"] | None = None,
    **proxy_options: Any,
) -> APIRouter:
    """A router with one WebSocket route at ``path`` that bridges connections to the bus.

    Args:
        path: the route's path (may have path parameters, e.g. ``"/ws/{caller}"``).
        worker_name: the local worker the peer talks to (a name, or a callable of the
            :class:`BusSession`).
        remote_worker_name: the worker on the peer's side (a name, or a callable).
        dependencies: FastAPI dependencies run before the WebSocket is accepted (auth).
        forward_messages: extra message types forwarded by source (see the proxies).
        serializer: the codec of the links (default JSON, compatible with the reference).
        name: the route's name, and the prefix of each proxy's worker name
            (``"<name>:<remote worker name>"``).
        identity: a dependency whose result becomes :attr:`BusSession.identity`, for example
            :class:`~fastapi_busproxy.security.BearerTokenAuth`; it authenticates as well.
        session_workers: called with each session; the workers it returns are added before the
            proxy and cancelled when the connection ends.
        duplicate_policy: ``"refuse"`` or ``"replace"``; default from the settings.
        **proxy_options: overrides of the settings' proxy options (``max_message_size``,
            ``send_queue_size``, ``send_timeout``, ``ping_interval``...).

    The router carries the app's runner lifespan: including it is enough to start and stop
    the shared runner with the app.
    """
    if not path.startswith("/"):
        raise ConfigurationError(f"path must start with '/', not {path!r}")
    route = _Route(
        worker_name=worker_name,
        remote_worker_name=remote_worker_name,
        forward_messages=tuple(forward_messages),
        serializer=serializer,
        name=name,
        session_workers=session_workers,
        duplicate_policy=duplicate_policy,
        proxy_options=proxy_options,
    )
    router = APIRouter(lifespan=bus_lifespan)
    identity_dependency = identity or _no_identity

    async def bus_proxy_endpoint(
        websocket: WebSocket, who: Any = Depends(identity_dependency)
    ) -> None:
        await _serve_session(websocket, who, route)

    router.add_api_websocket_route(
        path, bus_proxy_endpoint, name=name, dependencies=list(dependencies or ())
    )
    return router


def include_bus_proxy(
    app: FastAPI,
    path: str,
    worker_name: NameSource,
    *,
    remote_worker_name: NameSource,
    **options: Any,
) -> None:
    """``app.include_router(bus_proxy_router(path, worker_name=..., ...))`` in one call."""
    app.include_router(
        bus_proxy_router(
            path, worker_name=worker_name, remote_worker_name=remote_worker_name, **options
        )
    )


async def _resolve(source: NameSource, session: BusSession, what: str) -> str:
    value: Any = source(session) if callable(source) else source
    if inspect.isawaitable(value):
        value = await value
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{what} must resolve to a non-empty str, not {value!r}")
    return value


async def _deny(websocket: WebSocket, status: int) -> None:
    """Refuse the handshake with an HTTP status (403 where the server cannot send others)."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(Response(status_code=status))
    else:
        await websocket.close(code=CloseCode.POLICY_VIOLATION)


async def _serve_session(websocket: WebSocket, identity: Any, route: _Route) -> None:
    app = websocket.app
    state = _state(app)
    runner = runner_of(app)
    if runner.state is not RunnerState.RUNNING:
        logger.warning("refused a connection to %s: the runner is not running", route.name)
        await _deny(websocket, 503)
        return
    session = BusSession(websocket=websocket, identity=identity, runner=runner)
    try:
        session.worker_name = await _resolve(route.worker_name, session, "worker_name")
        session.remote_worker_name = await _resolve(
            route.remote_worker_name, session, "remote_worker_name"
        )
    except Exception:
        logger.exception("route %s could not name the session's workers", route.name)
        await _deny(websocket, 500)
        return
    remote = session.remote_worker_name
    policy = route.duplicate_policy or state.settings.duplicate_policy
    resume = parse_resume_header(websocket.headers.get(RESUME_HEADER))
    while (existing := state.sessions.get(remote)) is not None:
        proxy = existing.proxy
        if proxy is not None and resume is not None and proxy.can_resume(*resume):
            logger.info("route %s: %s resumes its session", route.name, remote)
            await proxy.resume(websocket, resume[1])
            return
        if proxy is not None and proxy.detached:
            logger.info(
                "route %s: a new session of %s replaces the one waiting for it", route.name, remote
            )
            await proxy.end_session("replaced by a new session")
            await existing.done.wait()
            continue
        if proxy is not None and not proxy.session_open:
            # Ending (its connection closed): its name is free once its workers have stopped.
            try:
                await asyncio.wait_for(existing.done.wait(), SESSION_END_WAIT)
            except asyncio.TimeoutError:
                logger.warning(
                    "route %s: the last session of %s did not end in %ss; refused a new one",
                    route.name,
                    remote,
                    SESSION_END_WAIT,
                )
                await websocket.accept()
                await websocket.close(
                    CloseCode.TRY_AGAIN_LATER, f"the last session of {remote} is still ending"
                )
                return
            continue
        if policy == "refuse":
            logger.info("route %s: refused a second connection for %s", route.name, remote)
            await websocket.accept()
            await websocket.close(CloseCode.DUPLICATE_SESSION, f"{remote} is already connected")
            return
        logger.info("route %s: a new connection replaces the one of %s", route.name, remote)
        if existing.proxy is not None:
            await existing.proxy.close(CloseCode.SESSION_REPLACED, "replaced by a new connection")
        await existing.done.wait()
    directory = getattr(runner.bus, "sessions", None)  # a durable Redis bus's
    taken = None
    if resume is not None and directory is not None:
        # A session this instance does not have: another instance served it until it died?
        acknowledged = parse_resume_acknowledged(websocket.headers.get(RESUME_HEADER))
        record = await directory.lookup(resume[0])
        if acknowledged is not None and record is not None and record.remote_worker == remote:
            if await directory.is_alive(record.owner):
                # Held by a live instance (the client lost only its connection): it resumes
                # there, or the session ends there; until then, come back later.
                logger.info(
                    "route %s: the session of %s is held by instance %s; try again later",
                    route.name,
                    remote,
                    record.owner,
                )
                await websocket.accept()
                await websocket.close(
                    CloseCode.TRY_AGAIN_LATER, f"the session of {remote} is held elsewhere"
                )
                return
            # What the dead instance sent and kept, from what the client did not receive.
            sent = await directory.sent_after(resume[0], resume[1])
            taken = (resume[0], resume[1], acknowledged, sent)
    entry = _Session()
    state.sessions[remote] = entry
    kept = False
    # The connection's proxy and session workers end together, and only together: a peer's
    # (or a session worker's) end() ends this session, never the app's runner.
    group = runner.new_session(f"{route.name}:{remote}#{next(_session_ids)}")
    try:
        if route.session_workers is not None:
            made = route.session_workers(session)
            if inspect.isawaitable(made):
                made = await made
            await runner.add_workers(*made, session=group)
        options = {**state.settings.server_proxy_options(), **route.proxy_options}
        proxy = WebSocketProxyServer(
            f"{route.name}:{remote}",
            websocket=websocket,
            worker_name=session.worker_name,
            remote_worker_name=remote,
            forward_messages=route.forward_messages,
            serializer=route.serializer,
            **options,
        )
        entry.proxy = session.proxy = proxy
        if directory is not None and proxy.resumable:
            # Nothing for the client is only in this process's memory: what this process
            # sends it goes through its stream, and what is sent on the link is kept first.
            proxy.persist_sessions(directory.keep_sent)
            bus: Any = runner.bus  # the one bus that has a session directory: a RedisBus
            bus.send_through_stream(remote)
            entry.through_stream = (bus, remote)
        if taken is not None and proxy.resumable:
            logger.info(
                "route %s: %s takes over its session from another instance", route.name, remote
            )
            proxy.take_over(*taken)
        await runner.add_workers(proxy, session=group)
        if directory is not None and proxy.session_id is not None:
            entry.directory, entry.recorded, entry.runner = directory, proxy.session_id, runner
            await directory.remember(
                proxy.session_id, remote, session.worker_name, proxy.resume_grace or 0
            )
        await proxy.wait_connection()
        if proxy.session_open:
            # The session outlives this connection (it waits for its client to resume): the
            # app keeps it until it ends, and this endpoint returns, so that a dead
            # connection holds neither its ASGI task nor the server's shutdown.
            state.keepers.spawn(_release_when_over(state, remote, entry, group, proxy), name=remote)
            kept = True
    except ConfigurationError:
        logger.exception("route %s could not start the session of %s", route.name, remote)
        if websocket.application_state.name == "CONNECTING":
            await _deny(websocket, 409)
    finally:
        if not kept:
            await _release(state, remote, entry, group)


async def _release_when_over(
    state: Any, remote: str, entry: _Session, group: WorkerSession, proxy: WebSocketProxyServer
) -> None:
    try:
        await proxy.wait()
    finally:
        await _release(state, remote, entry, group)


async def _release(state: Any, remote: str, entry: _Session, group: WorkerSession) -> None:
    """End a session: stop its workers, then free its name (a newcomer under the same name
    waits for that, see SESSION_END_WAIT)."""
    try:
        # Each worker stops in a task it owns, which goes on if we are cancelled here.
        await asyncio.shield(group.cancel("session ended"))
        if entry.directory is not None and entry.recorded is not None:
            # Ended by the app's shutdown, the session may go on at another instance.
            running = entry.runner is not None and entry.runner.state is RunnerState.RUNNING
            await entry.directory.forget(entry.recorded, ended=running)
    finally:
        if entry.through_stream is not None:
            bus, remote_worker = entry.through_stream
            bus.stop_sending_through_stream(remote_worker)
            entry.through_stream = None
        if state.sessions.get(remote) is entry:
            del state.sessions[remote]
        entry.done.set()
