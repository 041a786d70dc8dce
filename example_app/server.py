"""The server: an assistant behind a bearer-token protected bus proxy route.

Run it alone with ``python -m example_app server --port 8000`` (token from
``BUSPROXY_BEARER_TOKENS``, default ``{"demo-token": "demo"}``). Callers connect to
``ws://host:port/ws/<caller name>``: each caller's worker name comes from the path, so callers
do not collide on the shared bus.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from fastapi_busproxy import (
    BearerTokenAuth,
    BusProxySettings,
    BusSession,
    WorkerRunner,
    configure_bus,
    get_runner,
    include_bus_proxy,
    runner_of,
)

from .assistant import Assistant

DEFAULT_TOKENS = {"demo-token": "demo"}


def caller_name(session: BusSession) -> str:
    return str(session.path_params["caller"])


def create_gateway() -> FastAPI:
    """The server app without an assistant of its own, for several processes on Redis::

        uvicorn --factory example_app.server:create_gateway --workers 2

    with ``BUSPROXY_BUS_URL=redis://...`` and an assistant elsewhere on the same Redis
    (``python -m example_app assistant``).
    """
    return create_app(with_assistant=False)


def create_app(settings: BusProxySettings | None = None, *, with_assistant: bool = True) -> FastAPI:
    """The example server app; ``settings`` default to the environment (``BUSPROXY_*``)."""
    settings = settings or BusProxySettings()
    if not settings.bearer_tokens:
        settings = settings.model_copy(update={"bearer_tokens": DEFAULT_TOKENS})

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Workers added here start with the app's runner.
        if with_assistant:
            await runner_of(app).add_workers(Assistant("assistant"))
        yield

    app = FastAPI(title="fastapi-busproxy example", lifespan=lifespan)
    configure_bus(app, settings=settings)
    include_bus_proxy(
        app,
        "/ws/{caller}",
        "assistant",
        remote_worker_name=caller_name,
        dependencies=[Depends(BearerTokenAuth(settings=settings))],
    )

    @app.get("/workers")
    async def workers(runner: WorkerRunner = Depends(get_runner)) -> dict[str, list[str]]:
        """Which workers the app's runner knows (local and remote)."""
        return {"ready": sorted(runner.registry)}

    return app
