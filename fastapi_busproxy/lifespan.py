"""The app's shared bus and runner, started and stopped with the app's lifespan.

One :class:`~fastapi_busproxy.runner.WorkerRunner` per app, shared by every proxy route and
outbound link of that app, created on first use from :class:`BusProxySettings` (the bus is
chosen by ``bus_url``: ``memory://`` by default, ``redis://...`` for several processes).

``bus_proxy_router()`` carries :func:`bus_lifespan` as its router lifespan, which FastAPI
merges into the app's; ``include_bus_proxy()`` and ``include_bus_link()`` install it on the app
directly. However many routes install it, the runner starts once, when the app starts, and
ends when the app shuts down: open links are closed with 1001 and workers end (cancelled after
``shutdown_timeout`` seconds).

The app's own code reaches the runner with :func:`runner_of` (``runner_of(app)``, usable in the
app's own lifespan to add workers before the runner starts) or, in endpoints, with the
dependency :func:`get_runner` (``runner: WorkerRunner = Depends(get_runner)``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.requests import HTTPConnection

from ._tasks import TaskSet
from .bus import InMemoryBus, WorkerBus
from .closecodes import CloseCode
from .exceptions import ConfigurationError
from .jobs.serving import JobLimits
from .runner import RunnerState, WorkerRunner

if TYPE_CHECKING:  # pydantic-settings is imported on first use: it is a third of our import time
    from .settings import BusProxySettings

__all__ = [
    "bus_lifespan",
    "close_server_links",
    "configure_bus",
    "create_bus",
    "get_runner",
    "install_bus_lifespan",
    "runner_of",
    "settings_of",
]

logger = logging.getLogger(__name__)

STATE_KEY = "busproxy"


@dataclass
class _BusState:
    settings: BusProxySettings
    runner: WorkerRunner | None = None
    users: int = 0
    installed: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    sessions: dict[str, Any] = field(default_factory=dict)  # remote worker name -> session
    # Sessions that outlive their connection (waiting for their client to resume): each is
    # released by a task of the app's when it ends.
    keepers: TaskSet = field(default_factory=lambda: TaskSet("bus sessions"))


def _state(app: Any) -> _BusState:
    state: _BusState | None = getattr(app.state, STATE_KEY, None)
    if state is None:
        from .settings import BusProxySettings

        state = _BusState(settings=BusProxySettings())
        setattr(app.state, STATE_KEY, state)
    return state


def configure_bus(
    app: Any,
    *,
    settings: BusProxySettings | None = None,
    runner: WorkerRunner | None = None,
) -> WorkerRunner:
    """Choose the app's settings and, optionally, its runner; returns the runner.

    Call it before the app starts. Without it, settings come from the environment.

    Raises:
        ConfigurationError: the app's runner is already running.
    """
    state = _state(app)
    if state.runner is not None and state.runner.state is RunnerState.RUNNING:
        raise ConfigurationError("the app's runner is already running: configure it earlier")
    if settings is not None:
        state.settings = settings
    if runner is not None:
        state.runner = runner
    return runner_of(app)


def settings_of(app: Any) -> BusProxySettings:
    """The settings the app's bus and proxies use."""
    return _state(app).settings


def create_bus(settings: BusProxySettings) -> WorkerBus:
    """The bus ``settings.bus_url`` names.

    Raises:
        ConfigurationError: an unknown scheme, or a Redis URL without the ``redis`` extra.
    """
    url = settings.bus_url
    scheme = url.split("://", 1)[0].lower() if "://" in url else url.lower()
    options = {
        "capacity": settings.bus_queue_size,
        "system_capacity": settings.bus_system_queue_size,
    }
    if scheme in ("memory", ""):
        return InMemoryBus(**options)
    if scheme in ("redis", "rediss", "unix"):
        from .redis import RedisBus  # redis itself is imported when the bus starts

        return RedisBus(
            url,
            capacity=settings.bus_queue_size,
            system_capacity=settings.bus_system_queue_size,
            delivery=settings.bus_delivery,
            stream_max_len=settings.bus_stream_max_len,
            stream_max_age=settings.bus_stream_max_age,
        )
    raise ConfigurationError(
        f"unknown bus_url scheme in {url!r}: use memory:// or redis://host:port/db"
    )


def runner_of(app: Any) -> WorkerRunner:
    """The app's shared runner, created on first use (not started before the app starts).

    Workers added before the app starts (for example in the app's own lifespan) start with
    the runner.
    """
    state = _state(app)
    if state.runner is None or state.runner.state is RunnerState.FINISHED:
        settings = state.settings
        state.runner = WorkerRunner(
            name=settings.runner_name,
            bus=create_bus(settings),
            handle_sigint=False,
            job_limits=JobLimits(
                max_jobs=settings.max_jobs_in_flight,
                max_jobs_per_source=settings.max_jobs_per_source,
            ),
        )
    return state.runner


def get_runner(connection: HTTPConnection) -> WorkerRunner:
    """Dependency: the app's shared runner (``runner = Depends(get_runner)``)."""
    return runner_of(connection.app)


@asynccontextmanager
async def bus_lifespan(app: Any) -> AsyncIterator[None]:
    """Lifespan of the app's runner; nested uses share one runner, started once."""
    state = _state(app)
    async with state.lock:
        state.users += 1
        if state.users == 1:
            runner = runner_of(app)
            await runner.start()
            logger.info("runner %s started on %s", runner.name, type(runner.bus).__name__)
    try:
        yield
    finally:
        async with state.lock:
            state.users -= 1
            if state.users == 0 and state.runner is not None:
                await _shutdown(state.runner, state.settings.shutdown_timeout)
                await state.keepers.cancel_all()  # ended with their proxies, or now


async def _shutdown(runner: WorkerRunner, timeout: float) -> None:
    await close_server_links(runner, CloseCode.GOING_AWAY, "server shutting down")
    try:
        await asyncio.wait_for(asyncio.shield(runner.end("application shutdown")), timeout)
    except asyncio.TimeoutError:
        logger.warning("runner %s: workers did not end in %ss; cancelling", runner.name, timeout)
        await runner.cancel("shutdown timeout")


async def close_server_links(runner: WorkerRunner, code: int, reason: str) -> None:
    """Close every server link of ``runner`` with ``code`` (1001 on shutdown)."""
    from .proxy.server import WebSocketProxyServer

    proxies = [w for w in runner.workers if isinstance(w, WebSocketProxyServer)]
    await asyncio.gather(*(proxy.close(code, reason) for proxy in proxies))


def install_bus_lifespan(app: Any) -> None:
    """Merge :func:`bus_lifespan` into ``app``'s lifespan (once per app)."""
    state = _state(app)
    if state.installed:
        return
    state.installed = True
    original = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app_: Any) -> AsyncIterator[Any]:
        async with original(app_) as maybe_state, bus_lifespan(app_):
            yield maybe_state

    app.router.lifespan_context = lifespan
