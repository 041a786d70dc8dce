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
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

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


WRITE_BUFFER = 16_384
"""What a connection holds unwritten before a write waits: uvicorn's buffer and the kernel's
(the flooders' receive buffers are as small). A write to a peer that reads nothing then stalls
within a few dozen answers, as behind a slow network, whatever the machine's load: the flood
test sees the send_timeout policy act within its run, not only when the flooders are fast
enough to fill megabytes of loopback buffers."""


class SmallBuffers(WebSocketsSansIOProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        transport.set_write_buffer_limits(high=WRITE_BUFFER)


async def main() -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, WRITE_BUFFER)  # accepted ones inherit
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    app = make_app(sock.getsockname()[1])
    config = uvicorn.Config(app, log_level="warning", ws=SmallBuffers, ws_per_message_deflate=False)
    await Server(config, app).serve(sockets=[sock])


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
