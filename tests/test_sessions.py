"""Sessions on an app's shared runner: what end() and cancel() stop, over a real uvicorn server.

A connection of ``include_bus_proxy`` is a session (its proxy and its session workers). A
session worker's ``end()``, or a peer's end or cancel request, ends that session only: never
the worker other sessions share, never the app's runner.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fastapi import FastAPI

from fastapi_busproxy import (
    BaseWorker,
    BusCancelWorkerMessage,
    BusEndMessage,
    BusJobRequestMessage,
    BusMessage,
    JobParams,
    RunnerState,
    WebSocketProxyClient,
    WorkerRunner,
    include_bus_proxy,
    runner_of,
)
from fastapi_busproxy.proxy import ReconnectPolicy
from tests.servers import running_uvicorn

pytestmark = [pytest.mark.anyio, pytest.mark.uvicorn]

NO_RETRY = ReconnectPolicy(max_attempts=1)


class Assistant(BaseWorker):
    """The worker every session shares."""

    async def on_job_request(self, message: BusJobRequestMessage) -> dict[str, Any]:
        return {"for": message.source}


class Butler(BaseWorker):
    """A session worker: the job "leave" ends its session, as a pipecat worker's end() does."""

    async def on_job_request(self, message: BusJobRequestMessage) -> dict[str, Any] | None:
        if message.job_name == "leave":
            await self.send_job_response(message.job_id, {"bye": message.source})
            await self.end(reason="the caller left")
            return None
        return {"served": message.source}


def caller_of(session: Any) -> str:
    return str(session.websocket.path_params["caller"])


def make_app() -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runner_of(app).add_workers(Assistant("assistant"))
        yield

    app = FastAPI(lifespan=lifespan)
    include_bus_proxy(app, "/shared/{caller}", "assistant", remote_worker_name=caller_of)
    include_bus_proxy(
        app,
        "/butler/{caller}",
        lambda session: f"butler-{caller_of(session)}",
        remote_worker_name=caller_of,
        session_workers=lambda session: [Butler(f"butler-{caller_of(session)}")],
    )
    return app


class Caller:
    """A client process: a runner, the caller's worker and its proxy."""

    def __init__(self, url: str, name: str, remote: str) -> None:
        self.runner = WorkerRunner(name=f"client-{name}", handle_sigint=False)
        self.worker = BaseWorker(name)
        self.proxy = WebSocketProxyClient(
            "link",
            url=url,
            remote_worker_name=remote,
            local_worker_name=name,
            active=True,
            reconnect=NO_RETRY,
        )
        self.disconnected = asyncio.Event()

        @self.proxy.event_handler("on_disconnected")
        async def disconnected(proxy: WebSocketProxyClient, websocket: Any) -> None:
            self.disconnected.set()

    async def __aenter__(self) -> Caller:
        await self.runner.start()
        await self.runner.add_workers(self.worker, self.proxy)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cancel("test over")

    async def ask(self, target: str, name: str | None = None) -> dict[str, Any]:
        async with self.worker.job(target, params=JobParams(name=name, timeout=10)) as job:
            pass
        return job.response

    async def send(self, message: BusMessage) -> None:
        await self.worker.send_bus_message(message)


@pytest.mark.parametrize(
    "request_from_peer",
    [
        pytest.param(
            lambda: BusEndMessage(source="alice", target="assistant", reason="bye"), id="end"
        ),
        pytest.param(
            lambda: BusCancelWorkerMessage(source="alice", target="assistant"),
            id="cancel-the-shared-worker",
        ),
    ],
)
async def test_a_peers_end_or_cancel_ends_its_own_connection_only(request_from_peer: Any) -> None:
    app = make_app()
    async with running_uvicorn(app) as server:
        async with Caller(server.url("/shared/alice"), "alice", "assistant") as alice:
            async with Caller(server.url("/shared/bob"), "bob", "assistant") as bob:
                assert await alice.ask("assistant") == {"for": "alice"}
                assert await bob.ask("assistant") == {"for": "bob"}

                await alice.send(request_from_peer())
                await asyncio.wait_for(alice.disconnected.wait(), 10)

                runner = runner_of(app)
                assert runner.state is RunnerState.RUNNING
                shared = runner.get_worker("assistant")
                assert shared is not None
                assert not shared.finished
                assert await bob.ask("assistant") == {"for": "bob"}
                assert not bob.disconnected.is_set()


async def test_a_session_workers_end_ends_its_connection_not_the_app() -> None:
    app = make_app()
    async with running_uvicorn(app) as server:
        async with Caller(server.url("/butler/alice"), "alice", "butler-alice") as alice:
            async with Caller(server.url("/butler/bob"), "bob", "butler-bob") as bob:
                assert await alice.ask("butler-alice") == {"served": "alice"}
                runner = runner_of(app)
                butler = runner.get_worker("butler-alice")
                assert butler is not None
                assert await alice.ask("butler-alice", "leave") == {"bye": "alice"}
                await asyncio.wait_for(alice.disconnected.wait(), 10)
                await asyncio.wait_for(butler.wait(), 10)

                assert runner.state is RunnerState.RUNNING
                assert runner.get_worker("butler-alice") is None
                assert await bob.ask("butler-bob") == {"served": "bob"}
                assert runner.get_worker("assistant") is not None
