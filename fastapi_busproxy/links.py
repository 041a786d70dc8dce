"""Outbound links: a :class:`WebSocketProxyClient` on the app's runner, for the app's lifetime.

::

    app = FastAPI()
    link = include_bus_link(
        app,
        url="wss://agents.example.com/ws",
        local_worker_name="voice",
        remote_worker_name="assistant",
        headers=token_provider,       # called at every (re)connect
    )

The link starts with the app (connecting at once, unless ``active=False``) and closes with
1001 when the app shuts down. ``headers`` may be a mapping or a callable, sync or async, so a
provider that fetches a fresh token (for example with an ``httpx.AsyncClient``) is called at
every connect. Outside FastAPI, add a :class:`WebSocketProxyClient` to a
:class:`WorkerRunner` yourself: it is the same object.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI

from .lifespan import bus_lifespan, runner_of, settings_of
from .messages import BusMessage
from .proxy.client import HeadersProvider, WebSocketProxyClient
from .serializers import MessageSerializer

if TYPE_CHECKING:
    from .settings import BusProxySettings

__all__ = ["bearer_headers", "include_bus_link"]


def bearer_headers(settings: BusProxySettings | None = None) -> dict[str, str] | None:
    """``{"Authorization": "Bearer <client_token>"}`` from the settings, or ``None``."""
    if settings is None:
        from .settings import BusProxySettings

        settings = BusProxySettings()
    if settings.client_token is None:
        return None
    return {"Authorization": f"Bearer {settings.client_token.get_secret_value()}"}


def include_bus_link(
    app: FastAPI,
    *,
    url: str,
    local_worker_name: str,
    remote_worker_name: str,
    headers: HeadersProvider | None = None,
    name: str | None = None,
    forward_messages: Iterable[type[BusMessage]] = (),
    serializer: MessageSerializer | None = None,
    active: bool = True,
    **client_options: Any,
) -> WebSocketProxyClient:
    """Keep a link from ``app``'s runner to a remote bus for as long as the app runs.

    Args:
        url, local_worker_name, remote_worker_name, forward_messages, serializer: as for
            :class:`WebSocketProxyClient`.
        headers: handshake headers, or a provider called at every connect; default: a bearer
            header from ``BUSPROXY_CLIENT_TOKEN`` if set.
        name: the proxy's worker name (default ``"link:<remote_worker_name>"``).
        active: connect when the app starts (``False``: when the proxy is activated).
        **client_options: overrides of the settings' client options (``reconnect``,
            ``open_timeout``, ``send_queue_size``...).

    Returns the proxy, to register event handlers or read its ``stats``.
    """
    settings = settings_of(app)
    options = {**settings.client_proxy_options(), **client_options}
    proxy = WebSocketProxyClient(
        name or f"link:{remote_worker_name}",
        url=url,
        remote_worker_name=remote_worker_name,
        local_worker_name=local_worker_name,
        forward_messages=forward_messages,
        headers=headers if headers is not None else bearer_headers(settings),
        serializer=serializer,
        active=active,
        **options,
    )

    @asynccontextmanager
    async def link_lifespan(app_: Any) -> AsyncIterator[None]:
        async with bus_lifespan(app_):
            await runner_of(app_).add_workers(proxy)
            yield

    app.include_router(APIRouter(lifespan=link_lifespan))
    return proxy
