"""A traced app in a process of its own, for tests/test_tracing.py.

    python -m tests.tracing_server SPANS_FILE

Serves ``include_bus_proxy(app, "/ws", "assistant", remote_worker_name="voice")`` with an
assistant that sends one update and then answers, on 127.0.0.1 and a free port (``READY
<port>`` on stdout), with tracing on and an in-memory exporter; on shutdown (SIGTERM) it writes
the spans it made to SPANS_FILE, one JSON object per line.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from fastapi_busproxy import BaseWorker, BusJobRequestMessage, include_bus_proxy, runner_of, tracing
from fastapi_busproxy.serve import Server


class Assistant(BaseWorker):
    async def on_job_request(self, message: BusJobRequestMessage) -> dict[str, Any] | None:
        await self.send_job_update(message.job_id, {"progress": 0.5})
        return {"n": 2 * (message.payload or {}).get("n", 0)}


def span_record(span: Any) -> dict[str, Any]:
    context = span.get_span_context()
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
        "links": [f"{link.context.span_id:016x}" for link in span.links],
        "attributes": dict(span.attributes or {}),
        "process": "server",  # (the tests' own spans say "client")
    }


def main(spans_file: str) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.instrument(tracer_provider=provider)

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()  # connections wait in the backlog until uvicorn serves them

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runner_of(app).add_workers(Assistant("assistant"))
        print(f"READY {sock.getsockname()[1]}", flush=True)
        yield
        lines = [json.dumps(span_record(span)) for span in exporter.get_finished_spans()]
        Path(spans_file).write_text("".join(line + "\n" for line in lines))  # noqa: ASYNC240

    app = FastAPI(lifespan=lifespan)
    include_bus_proxy(app, "/ws", "assistant", remote_worker_name="voice")
    server = Server(uvicorn.Config(app, log_level="warning", ws="websockets-sansio"), app)
    asyncio.run(server.serve(sockets=[sock]))


if __name__ == "__main__":
    main(sys.argv[1])
