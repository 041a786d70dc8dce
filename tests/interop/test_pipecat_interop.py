"""Interop with pipecat-ai 1.14 (the reference), in separate processes, over real uvicorn.

pipecat runs only in the side environment (``tests/compat/side_env.py``), as a subprocess:
``pipecat_client.py`` (a pipecat ``WebSocketProxyClient`` whose "voice" worker runs two jobs)
and ``pipecat_server.py`` (a FastAPI app with a pipecat ``WebSocketProxyServer`` per
connection, in front of the worker). Both directions run the same two jobs on the same worker,
written in the pipecat idiom, and must give what pipecat gives against itself:

- "echo": one update ``{"progress": 0.5}``, then the response ``{"echo": <payload>}``;
- "stream": stream start ``{"n": 3}``, data ``{"i": 0}``, ``{"i": 1}``, ``{"i": 2}``, stream end
  ``{"total": 3}``; the stream's end ends the job and its data is the response.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fastapi import FastAPI

from fastapi_busproxy import (
    BaseWorker,
    BusJobRequestMessage,
    WebSocketProxyClient,
    WorkerRunner,
    include_bus_proxy,
    runner_of,
)
from tests.compat.side_env import require_pipecat_python
from tests.interop.side_process import PIPECAT_CLIENT, PIPECAT_SERVER, SideProcess
from tests.servers import running_uvicorn

pytestmark = [pytest.mark.anyio, pytest.mark.uvicorn]

# The payload of the "echo" job; pipecat_client.py sends the same one.
ECHO_PAYLOAD: dict[str, Any] = {
    "text": "hello",
    "n": 1,
    "nested": {"ok": True, "none": None},
    "list": [1, "a"],
}

# What pipecat-ai 1.14 gives against itself (test_reference_scripts_against_each_other):
# [event.type, event.data] for each event of ``async for event in job``, and job.response.
EXPECTED: dict[str, Any] = {
    "echo": {
        "events": [["update", {"progress": 0.5}]],
        "response": {"echo": ECHO_PAYLOAD},
    },
    "stream": {
        "events": [
            ["stream_start", {"n": 3}],
            ["stream_data", {"i": 0}],
            ["stream_data", {"i": 1}],
            ["stream_data", {"i": 2}],
            ["stream_end", {"total": 3}],
        ],
        "response": {"total": 3},
    },
}

# Budgets, so that a test that fails still ends within pytest's 60 s (it takes 1-2 s).
READY_TIMEOUT = 15.0  # importing pipecat takes a second or two
CLIENT_TIMEOUT = 25.0  # pipecat_client.py gives up by itself after 20 s
EXIT_TIMEOUT = 10.0
JOB_TIMEOUT = 6.0


class Worker(BaseWorker):
    """The worker of the interop tests, in the pipecat idiom (as in pipecat_server.py)."""

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


class Voice(BaseWorker):
    """Our "voice" worker: runs the two jobs as pipecat_client.py's does."""

    async def run_job(self, params: Any) -> dict[str, Any]:
        events: list[list[Any]] = []
        async with self.job("worker", params=params) as job:
            async for event in job:
                events.append([event.type, event.data])
        return {"events": events, "response": job.response}

    async def run_jobs(self) -> dict[str, Any]:
        # Imported here, not at the top: a package without it fails these tests only, instead
        # of stopping the whole run at collection.
        from fastapi_busproxy import JobParams

        return {
            "echo": await self.run_job(
                JobParams(name="echo", payload=ECHO_PAYLOAD, timeout=JOB_TIMEOUT)
            ),
            "stream": await self.run_job(JobParams(name="stream", timeout=JOB_TIMEOUT)),
        }


async def run_pipecat_client(python: str, url: str) -> dict[str, Any]:
    """Run pipecat_client.py against ``url``; return its JSON line once it has exited 0."""
    async with SideProcess.run(python, str(PIPECAT_CLIENT), url, stop_timeout=5) as client:
        line = await client.line_starting_with("{", CLIENT_TIMEOUT)
        code = await client.wait(EXIT_TIMEOUT)
        result: dict[str, Any] = json.loads(line)
        assert "error" not in result, client.report()
        assert code == 0, client.report()
        return result


@asynccontextmanager
async def pipecat_server(python: str) -> AsyncIterator[tuple[str, SideProcess]]:
    """Run pipecat_server.py; yield its WebSocket URL once it printed ``READY <port>``."""
    async with SideProcess.run(python, str(PIPECAT_SERVER), stop_timeout=5) as server:
        ready = await server.line_starting_with("READY ", READY_TIMEOUT)
        port = int(ready.split()[1])
        yield f"ws://127.0.0.1:{port}/ws", server


def check_job_events_constants() -> None:
    """Our JobEvent's type names are pipecat's."""
    from fastapi_busproxy import JobEvent

    assert (
        JobEvent.UPDATE,
        JobEvent.STREAM_START,
        JobEvent.STREAM_DATA,
        JobEvent.STREAM_END,
    ) == ("update", "stream_start", "stream_data", "stream_end")


async def test_reference_scripts_against_each_other() -> None:
    """pipecat against pipecat: the scripts work, and EXPECTED is what the reference gives."""
    python = require_pipecat_python()
    async with pipecat_server(python) as (url, server):
        assert await run_pipecat_client(python, url) == EXPECTED
        assert server.process.returncode is None, server.report()


async def test_pipecat_client_against_our_server(caplog: pytest.LogCaptureFixture) -> None:
    """A pipecat WebSocketProxyClient runs both jobs on our include_bus_proxy route."""
    python = require_pipecat_python()
    caplog.set_level(logging.WARNING, logger="fastapi_busproxy")

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        await runner_of(app).add_workers(Worker("worker"))
        yield

    app = FastAPI(lifespan=lifespan)
    include_bus_proxy(app, "/ws", "worker", remote_worker_name="voice")
    async with running_uvicorn(app) as server:
        result = await run_pipecat_client(python, server.url("/ws"))
        assert result == EXPECTED
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


async def test_our_client_against_pipecat_server() -> None:
    """Our WebSocketProxyClient runs both jobs on a pipecat WebSocketProxyServer; the pipecat
    server outlives our client's departure and serves the next client."""
    python = require_pipecat_python()
    check_job_events_constants()
    async with pipecat_server(python) as (url, server):
        runner = WorkerRunner(name="busproxy-client")
        voice = Voice("voice")
        proxy = WebSocketProxyClient(
            "proxy",
            url=url,
            remote_worker_name="worker",
            local_worker_name="voice",
            active=True,
        )
        async with runner:
            await runner.add_workers(voice, proxy)
            result = await asyncio.wait_for(voice.run_jobs(), 2 * JOB_TIMEOUT + 3)
        assert result == EXPECTED, server.report()
        # Our client left (closing its link): the reference server is still up and serving.
        assert await run_pipecat_client(python, url) == EXPECTED
        assert server.process.returncode is None, server.report()
