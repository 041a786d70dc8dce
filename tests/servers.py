"""Real servers for tests: uvicorn on 127.0.0.1, in the test's event loop.

The listening socket is bound and listening before uvicorn starts, so its port is known at
once and early connections wait in the backlog: no polling for "started".
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn

from fastapi_busproxy.serve import Server
from fastapi_busproxy.testing import _answered


def listening_socket(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


class RunningServer:
    def __init__(self, server: uvicorn.Server, port: int) -> None:
        self.server = server
        self.port = port

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"


@asynccontextmanager
async def running_uvicorn(
    app: Any, port: int = 0, *, plain: bool = False, **options: Any
) -> AsyncIterator[RunningServer]:
    """Serve ``app`` on 127.0.0.1 (``port`` 0: a free one) until the block ends; ``plain``
    serves it with ``uvicorn.Server`` itself, as ``uvicorn app:app`` does."""
    sock = listening_socket(port)
    config = uvicorn.Config(
        app, log_level="warning", lifespan="on", ws="websockets-sansio", **options
    )
    # Our Server closes bus links with 1001 before uvicorn's own shutdown (1012).
    server = uvicorn.Server(config) if plain else Server(config, app)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    port = sock.getsockname()[1]
    try:
        await asyncio.wait_for(_answered("127.0.0.1", port), 15)
        yield RunningServer(server, port)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)
        sock.close()
