"""The servers the benchmarks talk to, each run in its own OS process.

::

    python -m bench.server --kind echo|bus|bus-metrics|bus-traced --port P [--deflate on|off]
        [--serializer json|msgpack]

``echo`` is the baseline: a plain FastAPI WebSocket endpoint ``/echo`` that sends every binary
message back (and ``/echo-hop``, the same with the answer sent from a task of its own).
``bus`` serves ``include_bus_proxy(app, "/ws/{caller}", "echo", ...)`` on the in-memory bus,
with an ``echo`` worker that sends every bench message back to its source; ``bus-metrics`` the
same with the metrics and the status page mounted, ``bus-traced`` with tracing on.
Both run on the same uvicorn settings (``ws="websockets-sansio"``, log level warning, the
per-message-deflate setting given), on a socket bound here to 127.0.0.1 (``--port 0``: a free
port). ``READY <port>`` is printed on stdout once the app's lifespan has started.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, WebSocket

from fastapi_busproxy import (
    BaseWorker,
    BusJobRequestMessage,
    BusMessage,
    WebSocketProxyServer,
    include_bus_proxy,
    runner_of,
)
from fastapi_busproxy.serve import Server

from .messages import BENCH_TYPES, make_serializer

HOST = "127.0.0.1"
BACKLOG = 4096


class Echo(BaseWorker):
    """Sends every bench message back to the worker that sent it (one reply per caller), and
    answers every job with its payload.

    For the ``cut`` scenario, the sequence numbers received from callers named ``cut-...`` are
    tallied; the job ``tally`` (payload ``{"source": name}``) answers how many came, and how
    many of them were new.
    """

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.tallies: dict[str, tuple[int, set[int]]] = {}

    async def on_job_request(self, message: BusJobRequestMessage) -> dict[str, Any]:
        if message.job_name == "tally":
            count, seen = self.tallies.get((message.payload or {}).get("source", ""), (0, set()))
            return {"received": count, "unique": len(seen)}
        return {"echo": message.payload}

    async def on_bus_message(self, message: BusMessage) -> None:
        if isinstance(message, BENCH_TYPES):
            if message.source.startswith("cut-"):
                count, seen = self.tallies.setdefault(message.source, (0, set()))
                seen.add(message.seq)
                self.tallies[message.source] = (count + 1, seen)
            await self.send_bus_message(
                dataclasses.replace(message, source=self.name, target=message.source)
            )
            return
        await super().on_bus_message(message)


def echo_app() -> FastAPI:
    app = FastAPI()

    @app.websocket("/echo")
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        async for data in websocket.iter_bytes():
            await websocket.send_bytes(data)

    @app.websocket("/echo-hop")
    async def echo_hop(websocket: WebSocket) -> None:
        # The same echo with the answer made in a task of its own, handed each message
        # through a bounded queue: the least any design pays whose worker runs apart from
        # the socket's reader (so that a slow worker cannot stall its link), as the bus's do.
        await websocket.accept()
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(100)

        async def worker() -> None:
            while (data := await queue.get()) is not None:
                await websocket.send_bytes(data)

        task = asyncio.create_task(worker())
        try:
            async for data in websocket.iter_bytes():
                await queue.put(data)
        finally:
            task.cancel()
            await asyncio.wait((task,))

    return app


def discarding_tracer_provider() -> Any:
    """A tracer provider that samples every span and discards it after the batch processor:
    what tracing costs the bus, less the exporter's own work."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Discard(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Discard()))
    return provider


def observed(app: FastAPI, kind: str) -> FastAPI:
    """``bus-metrics``: the metrics and the status page mounted; ``bus-traced``: tracing on,
    every span sampled."""
    if kind == "bus-metrics":
        from fastapi_busproxy import include_metrics, include_status_page

        include_metrics(app, "/metrics")
        include_status_page(app, "/status")
    elif kind == "bus-traced":
        from fastapi_busproxy import tracing

        tracing.instrument(tracer_provider=discarding_tracer_provider())
    return app


def bus_app(serializer: str) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runner_of(app).add_workers(Echo("echo"))
        yield

    app = FastAPI(lifespan=lifespan)
    include_bus_proxy(
        app,
        "/ws/{caller}",
        "echo",
        remote_worker_name=lambda session: session.path_params["caller"],
        serializer=make_serializer(serializer),
    )

    @app.websocket("/hand/{caller}")
    async def hand_wired(websocket: WebSocket, caller: str) -> None:
        # The reference page's form: the app accepts, no subprotocol chosen (our client's
        # link is upgraded in band), with resume_grace.
        await websocket.accept()
        proxy = WebSocketProxyServer(
            f"hand:{caller}",
            websocket=websocket,
            worker_name="echo",
            remote_worker_name=caller,
            serializer=make_serializer(serializer),
            resume_grace=30,
        )
        await runner_of(app).add_workers(proxy)
        await proxy.wait_connection()

    return app


def announce_when_started(app: FastAPI, port: int, check: Any = None) -> None:
    """Print ``READY <port>`` once the whole lifespan (the bus runner's too) has started."""
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app_: Any) -> AsyncIterator[Any]:
        async with inner(app_) as state:
            if check is not None:
                check(app_)
            print(f"READY {port}", flush=True)
            yield state

    app.router.lifespan_context = lifespan


def _echo_registered(app: FastAPI) -> None:
    if "echo" not in runner_of(app).registry:
        raise RuntimeError("the echo worker is not ready")


def bound_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, port))
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.server", description=__doc__)
    parser.add_argument(
        "--kind", choices=("echo", "bus", "bus-metrics", "bus-traced"), required=True
    )
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--deflate", choices=("on", "off"), default="off")
    parser.add_argument("--serializer", choices=("json", "msgpack"), default="json")
    args = parser.parse_args(argv)

    sock = bound_socket(args.port)
    port = sock.getsockname()[1]
    if args.kind == "echo":
        app = echo_app()
        announce_when_started(app, port)
    else:
        app = observed(bus_app(args.serializer), args.kind)
        announce_when_started(app, port, _echo_registered)
    config = uvicorn.Config(
        app,
        ws="websockets-sansio",
        ws_per_message_deflate=args.deflate == "on",
        log_level="warning",
        lifespan="on",
        backlog=BACKLOG,
    )
    # run() picks the event loop as `uvicorn app:app` does (uvloop when installed).
    Server(config, app).run(sockets=[sock])
    sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
