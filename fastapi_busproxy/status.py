"""A live status page of the app's bus, and the same data as JSON.

::

    app = FastAPI()
    include_bus_proxy(app, "/ws", "assistant", remote_worker_name="voice")
    include_status_page(app, "/busproxy/status", dependencies=[Depends(admin_only)])

Three routes, behind the same dependencies (the app's own auth):

- ``GET <path>``: an HTML page (plain JavaScript, no framework, no build step) that shows the
  links, the workers and the bus, updated live;
- ``GET <path>/events``: the same data as server-sent events, one
  :func:`~fastapi_busproxy.snapshot.bus_snapshot` every ``interval`` seconds;
- ``GET <path>/json``: one snapshot, as JSON (see ``docs/observability.md`` for its keys).

An event stream holds no queue: each event is a fresh snapshot, written when the last one was
taken. It ends when the client goes, after ``stream_lifetime`` seconds (the browser reconnects
at once, as server-sent events do), or when the app shuts down: an ASGI server waits for open
responses before it runs the app's shutdown, so :class:`fastapi_busproxy.serve.Server` (and
:func:`~fastapi_busproxy.testing.running_app`) end the streams first; under plain
``uvicorn``, a shutdown waits at most ``stream_lifetime`` seconds for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from importlib import resources
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI
from fastapi.params import Depends as DependsParam
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response, StreamingResponse

from ._observer import Observer, observer_lifespan, observer_of
from .exceptions import ConfigurationError

__all__ = ["bus_status", "include_status_page", "status_router"]

DEFAULT_INTERVAL = 1.0
DEFAULT_STREAM_LIFETIME = 30.0
DEFAULT_MAX_STREAMS = 32
RETRY_MS = 1000
"""What the page's ``EventSource`` waits before it reconnects (a stream that ended)."""

_PAGE = "status_page.html"


def bus_status(app: Any) -> dict[str, Any]:
    """The app's bus now, as a JSON-ready dict: what the status page shows and its JSON
    endpoint returns (:func:`~fastapi_busproxy.snapshot.bus_snapshot` of the app's runner,
    with the counters of the links that have ended). Reading it does no I/O."""
    return observer_of(app).snapshot()


def status_router(
    path: str = "/busproxy/status",
    *,
    dependencies: Sequence[DependsParam] | None = None,
    interval: float = DEFAULT_INTERVAL,
    stream_lifetime: float = DEFAULT_STREAM_LIFETIME,
    max_streams: int = DEFAULT_MAX_STREAMS,
    title: str = "Bus status",
    include_in_schema: bool = False,
) -> APIRouter:
    """A router with the status page at ``path``, its event stream at ``<path>/events`` and
    its JSON at ``<path>/json``.

    Args:
        path: the page's path.
        dependencies: FastAPI dependencies run before each of the three routes (auth). A
            browser's ``EventSource`` sends the page's cookies, not an ``Authorization``
            header: behind a bearer token, put the page behind cookie or proxy auth.
        interval: seconds between two events of a stream.
        stream_lifetime: seconds after which a stream ends (the page reconnects at once).
        max_streams: event streams open at once, for the app; one more is answered 503 (each
            open page takes a snapshot every ``interval`` seconds).
        title: the page's title.
        include_in_schema: list the routes in the app's OpenAPI schema.

    Raises:
        ConfigurationError: a path that does not start with ``/``, or a non-positive
            ``interval``, ``stream_lifetime`` or ``max_streams``.
    """
    if not path.startswith("/"):
        raise ConfigurationError(f"path must start with '/', not {path!r}")
    if not interval > 0 or not stream_lifetime > 0:
        raise ConfigurationError(
            f"interval and stream_lifetime must be > 0 seconds, not {interval}, {stream_lifetime}"
        )
    if max_streams < 1:
        raise ConfigurationError(f"max_streams must be at least 1, not {max_streams}")
    base = path.rstrip("/") or ""
    page = resources.files(__package__).joinpath(_PAGE).read_text(encoding="utf-8")
    router = APIRouter(lifespan=observer_lifespan)
    needs = list(dependencies or ())

    async def busproxy_status_page(request: Request) -> HTMLResponse:
        urls = {
            "events": request.url_for("busproxy_status_events").path,
            "json": request.url_for("busproxy_status_json").path,
        }
        # The title last: what it says is never read as a placeholder.
        html = (
            page.replace("{{ urls }}", _script_json(urls))
            .replace("{{ json_url }}", _html_text(urls["json"]))
            .replace("{{ title }}", _html_text(title))
        )
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    async def busproxy_status_json(request: Request) -> Response:
        return Response(
            orjson.dumps(observer_of(request.app).snapshot()),
            media_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    async def busproxy_status_events(request: Request) -> Response:
        observer = observer_of(request.app)
        if observer.streams >= max_streams:
            return Response(
                f"{max_streams} status streams are open already; try again later",
                status_code=503,
                headers={"Retry-After": str(max(1, round(stream_lifetime)))},
            )
        return StreamingResponse(
            _events(observer, interval, stream_lifetime),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    for route_path, endpoint in (
        (path, busproxy_status_page),
        (f"{base}/json", busproxy_status_json),
        (f"{base}/events", busproxy_status_events),
    ):
        router.add_api_route(
            route_path,
            endpoint,
            methods=["GET"],
            dependencies=needs,
            include_in_schema=include_in_schema,
            name=endpoint.__name__,
        )
    return router


def include_status_page(
    app: FastAPI,
    path: str = "/busproxy/status",
    *,
    dependencies: Sequence[DependsParam] | None = None,
    **options: Any,
) -> None:
    """``app.include_router(status_router(path, ...))`` in one call, and the counting of
    refused WebSocket handshakes (a middleware: call it before the app starts)."""
    observer_of(app).count_handshakes()
    app.include_router(status_router(path, dependencies=dependencies, **options))


async def _events(observer: Observer, interval: float, lifetime: float) -> AsyncIterator[bytes]:
    """One snapshot now, then one every ``interval`` seconds, until the stream's lifetime is
    over or the app closes the streams (the response ends the generator when the client
    goes)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + lifetime
    observer.stream_opened()
    try:
        yield f"retry: {RETRY_MS}\n\n".encode()
        while not observer.closing.is_set():
            yield b"data: " + orjson.dumps(observer.snapshot()) + b"\n\n"
            left = deadline - loop.time()
            if left <= 0:
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(observer.closing.wait(), min(interval, left))
    finally:
        observer.stream_closed()


def _html_text(text: str) -> str:
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    )


def _script_json(value: Any) -> str:
    """``value`` as JSON that is safe inside a ``<script>`` element."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
