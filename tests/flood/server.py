"""The server of the flood tests: ``python -m tests.flood.server`` serves, on 127.0.0.1, an app
wired as the reference page shows: one app-wide runner, a shared worker that answers jobs, and
a proxy per connection (``/ws/{caller}``). Settings come from the environment (``BUSPROXY_*``).
Prints ``READY <port>``, then serves until SIGTERM.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI

from fastapi_busproxy import BaseWorker, BusJobRequestMessage, include_bus_proxy, runner_of
from fastapi_busproxy.serve import Server


class Shared(BaseWorker):
    """The worker every connection shares: answers each job with its payload."""

    async def on_job_request(self, message: BusJobRequestMessage) -> dict[str, Any]:
        return {"echo": message.payload, "for": message.source}


def make_app(port: int) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runner_of(app).add_workers(Shared("shared"))
        # The socket listens already: connections wait in its backlog until uvicorn serves.
        print(f"READY {port}", flush=True)
        yield

    app = FastAPI(lifespan=lifespan)
    include_bus_proxy(
        app,
        "/ws/{caller}",
        "shared",
        remote_worker_name=lambda session: str(session.websocket.path_params["caller"]),
    )
    return app


async def main() -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    app = make_app(sock.getsockname()[1])
    config = uvicorn.Config(
        app, log_level="warning", ws="websockets-sansio", ws_per_message_deflate=False
    )
    await Server(config, app).serve(sockets=[sock])


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
