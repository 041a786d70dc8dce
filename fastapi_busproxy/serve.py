"""Serving an app with uvicorn so that links close with 1001 on shutdown.

uvicorn closes every open WebSocket with 1012 (service restart) before it runs the app's
lifespan shutdown. :class:`Server` first closes the app's bus links itself with 1001 (going
away), then lets uvicorn shut down. Clients treat both codes alike (they reconnect), so plain
``uvicorn app:app`` works too; this only makes the close code the one the docs promise.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import uvicorn

from ._observer import close_streams
from .closecodes import CloseCode
from .lifespan import STATE_KEY, close_server_links
from .runner import RunnerState

__all__ = ["Server", "run", "serve"]


class Server(uvicorn.Server):
    """A ``uvicorn.Server`` that closes the bus links of ``app`` with 1001 before shutdown, and
    ends the status page's event streams (which uvicorn would otherwise wait for)."""

    def __init__(self, config: uvicorn.Config, app: Any) -> None:
        super().__init__(config)
        self.bus_app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        close_streams(self.bus_app)  # uvicorn waits for open responses: end the status streams
        state = getattr(getattr(self.bus_app, "state", None), STATE_KEY, None)
        runner = state.runner if state is not None else None
        if runner is not None and runner.state is RunnerState.RUNNING:
            await close_server_links(runner, CloseCode.GOING_AWAY, "server shutting down")
        await super().shutdown(sockets)


async def serve(
    app: Any, *, host: str = "127.0.0.1", port: int = 8000, sockets: Any = None, **options: Any
) -> None:
    """Serve ``app`` until the process is told to stop (SIGINT/SIGTERM) or ``should_exit``."""
    # The sans-I/O WebSocket implementation: the legacy one is deprecated by websockets.
    options.setdefault("ws", "websockets-sansio")
    config = uvicorn.Config(app, host=host, port=port, **options)
    await Server(config, app).serve(sockets=sockets)


def run(app: Any, *, host: str = "127.0.0.1", port: int = 8000, **options: Any) -> None:
    """Blocking: like ``uvicorn.run(app, ...)``, with links closed with 1001 on shutdown."""
    asyncio.run(serve(app, host=host, port=port, **options))
