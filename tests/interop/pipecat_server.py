"""A pipecat-ai 1.14 server: a FastAPI app whose ``/ws`` bridges each connection to a worker.

Run with the side environment's python (pipecat is never imported by our own code)::

    .pipecat-venv/bin/python tests/interop/pipecat_server.py

It binds 127.0.0.1 on a free port itself, serves the app with uvicorn on that socket, and prints
``READY <port>`` on stdout once uvicorn has started (its lifespan has run and it accepts).
SIGTERM or SIGINT stops it (uvicorn's graceful shutdown, then the runner is cancelled).

The app is written as pipecat's documentation shows: one app-wide ``WorkerRunner`` started in
the lifespan with ``run(auto_end=False)`` in a task, the worker added to it, and a WebSocket
endpoint that accepts and adds a ``WebSocketProxyServer`` per connection.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI, WebSocket
from loguru import logger
from pipecat.bus import BusEndWorkerMessage, BusJobRequestMessage
from pipecat.workers.base_worker import BaseWorker
from pipecat.workers.proxy.websocket.server import WebSocketProxyServer
from pipecat.workers.runner import WorkerRunner

LOG_LEVEL = os.environ.get("BUSPROXY_PIPECAT_LOG_LEVEL", "WARNING")


class Worker(BaseWorker):
    """The worker of the interop tests, in the pipecat idiom."""

    async def on_job_request(self, message: BusJobRequestMessage) -> None:
        await super().on_job_request(message)
        if message.job_name == "stream":
            await self.send_job_stream_start(message.job_id, {"n": 3})
            for i in range(3):
                await self.send_job_stream_data(message.job_id, {"i": i})
            await self.send_job_stream_end(message.job_id, {"total": 3})
        else:
            await self.send_job_update(message.job_id, {"progress": 0.5})
            await self.send_job_response(message.job_id, {"echo": message.payload})


def make_app() -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # uvicorn owns the signals: the runner must not take SIGINT from it.
        runner = WorkerRunner(name="pipecat-server", handle_sigint=False)
        await runner.add_workers(Worker("worker"))
        task = asyncio.create_task(runner.run(auto_end=False))
        app.state.runner = runner
        try:
            yield
        finally:
            await runner.cancel(reason="server shutting down")
            await task

    app = FastAPI(lifespan=lifespan)
    counter = itertools.count()

    @app.websocket("/ws")
    async def websocket_endpoint(websocket: WebSocket) -> None:
        runner: WorkerRunner = websocket.app.state.runner
        await websocket.accept()
        proxy = WebSocketProxyServer(
            f"gateway-{next(counter)}",
            websocket=websocket,
            worker_name="worker",
            remote_worker_name="voice",
        )

        @proxy.event_handler("on_client_disconnected")
        async def on_client_disconnected(worker: WebSocketProxyServer, ws: WebSocket) -> None:
            # pipecat's server proxy does not stop when its client goes away: end this proxy
            # (only it; BaseWorker.end() would end the whole runner).
            await runner.bus.send(
                BusEndWorkerMessage(source="app", target=worker.name, reason="client left")
            )

        await runner.add_workers(proxy)
        await proxy.wait()

    return app


class Server(uvicorn.Server):
    """Prints ``READY <port>`` once started: the lifespan has run and the socket is served."""

    def __init__(self, config: uvicorn.Config, port: int) -> None:
        super().__init__(config)
        self.port = port

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and not self.should_exit:
            print(f"READY {self.port}", flush=True)


def main() -> None:
    logger.remove()
    logger.add(sys.stderr, level=LOG_LEVEL)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    config = uvicorn.Config(make_app(), log_level="warning", lifespan="on")
    Server(config, port).run(sockets=[sock])


if __name__ == "__main__":
    main()
