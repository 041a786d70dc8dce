"""End to end: a real uvicorn server with WebSocketProxyServer, a real WebSocketProxyClient."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fastapi import FastAPI, WebSocket

from fastapi_busproxy import (
    BaseWorker,
    BusJobRequestMessage,
    WebSocketProxyClient,
    WebSocketProxyServer,
    WorkerRunner,
)
from fastapi_busproxy.proxy import ReconnectPolicy

from tests.servers import running_uvicorn

pytestmark = pytest.mark.anyio

FAST_RETRY = ReconnectPolicy(initial_delay=0.05, max_delay=0.2)


class Assistant(BaseWorker):
    async def on_job_request(self, message: BusJobRequestMessage) -> dict[str, Any] | None:
        await self.send_job_update(message.job_id, {"progress": 0.5})
        await self.send_job_stream_start(message.job_id)
        for word in ("hello", "world"):
            await self.send_job_stream_data(message.job_id, {"text": word})
        await self.send_job_stream_end(message.job_id)
        return {"answer": (message.payload or {}).get("q", 0) * 2}


def make_server_app(local: BaseWorker, remote_name: str) -> tuple[FastAPI, WorkerRunner]:
    runner = WorkerRunner(name="server-runner")

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        async with runner:
            await runner.add_workers(local)
            yield

    app = FastAPI(lifespan=lifespan)
    counter = iter(range(1_000_000))

    @app.websocket("/ws")
    async def endpoint(websocket: WebSocket) -> None:
        proxy = WebSocketProxyServer(
            f"gateway-{next(counter)}",
            websocket=websocket,
            worker_name=local.name,
            remote_worker_name=remote_name,
        )
        await runner.add_workers(proxy)
        await proxy.wait()

    return app, runner


async def test_job_round_trip_client_to_server() -> None:
    app, _ = make_server_app(Assistant("assistant"), "voice")
    async with running_uvicorn(app) as server:
        runner = WorkerRunner(name="client-runner")
        voice = BaseWorker("voice")
        proxy = WebSocketProxyClient(
            "proxy",
            url=server.url("/ws"),
            remote_worker_name="assistant",
            local_worker_name="voice",
            active=True,
            reconnect=FAST_RETRY,
        )
        async with runner:
            await runner.add_workers(voice, proxy)
            events = []
            async with voice.job("assistant", name="ask", payload={"q": 21}, timeout=10) as job:
                async for event in job:
                    events.append(type(event).__name__)
            assert job.response == {"answer": 42}
            assert events == [
                "BusJobUpdateMessage",
                "BusJobStreamStartMessage",
                "BusJobStreamDataMessage",
                "BusJobStreamDataMessage",
                "BusJobStreamEndMessage",
            ]
            assert proxy.subprotocol == "busproxy.v1.json"
            assert proxy.stats.messages_in >= 6
