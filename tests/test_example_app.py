"""The example app end to end: its server on real uvicorn, its client, and the demo command."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from example_app.client import QUESTIONS, run_client
from example_app.server import create_app
from fastapi_busproxy import (
    BaseWorker,
    BusProxySettings,
    CloseCode,
    WebSocketProxyClient,
    WorkerRunner,
)
from fastapi_busproxy.proxy import ReconnectPolicy
from tests.servers import running_uvicorn
from tests.test_proxy_uvicorn import Events

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = BusProxySettings(bearer_tokens={"test-token": "tester"})


def test_the_demo_command_runs_and_exits_0() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "example_app"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "refused the handshake with HTTP 403" in result.stdout
    assert "[demo] done: 2 answers received" in result.stdout
    assert "answer: only messages for the worker on the other side" in result.stdout


@pytest.mark.anyio
async def test_client_and_server_exchange_jobs() -> None:
    lines: list[str] = []
    async with running_uvicorn(create_app(SETTINGS)) as server:
        answers = await run_client(
            server.url("/ws/alice"), token="test-token", name="alice", out=lines.append
        )
    assert [a["caller"] for a in answers if a] == ["alice"] * len(QUESTIONS)
    assert any("streaming" in line for line in lines)
    assert any("progress 100%" in line for line in lines)


@pytest.mark.anyio
async def test_server_shutdown_closes_with_1001_and_the_client_comes_back() -> None:
    runner = WorkerRunner(name="client-runner")
    proxy = WebSocketProxyClient(
        "link",
        url="ws://127.0.0.1:1/ws/bob",  # replaced below, once the port is known
        remote_worker_name="assistant",
        local_worker_name="bob",
        headers={"Authorization": "Bearer test-token"},
        active=False,
        reconnect=ReconnectPolicy(initial_delay=0.02, max_delay=0.1),
    )
    events = Events(proxy, "on_connected", "on_disconnected")
    bob = BaseWorker("bob")
    async with runner:
        await runner.add_workers(bob, proxy)
        async with running_uvicorn(create_app(SETTINGS)) as server:
            port = server.port
            proxy.url = server.url("/ws/bob")
            await proxy.connect()
            await asyncio.wait_for(runner.registry.wait_ready("assistant"), 10)
            await bob.activate_worker("assistant")  # the example's assistant starts inactive
            async with bob.job("assistant", payload={"question": "what is the bus?"}) as job:
                pass
            assert job.response is not None
            assert job.response["caller"] == "bob"
        # The server shut down: the link was closed with 1001, and the client retries.
        await asyncio.wait_for(events.wait("on_disconnected"), 10)
        assert proxy.close_info is not None
        assert proxy.close_info.code == CloseCode.GOING_AWAY
        assert "assistant" not in runner.registry

        async with running_uvicorn(create_app(SETTINGS), port=port):
            await asyncio.wait_for(events.wait("on_connected", 2), 10)
            await asyncio.wait_for(runner.registry.wait_ready("assistant"), 10)
            await bob.activate_worker("assistant")
            async with bob.job(
                "assistant", payload={"question": "what crosses a link?"}, timeout=10
            ) as job:
                pass
            assert job.response is not None
            assert job.response["answer"] == "only messages for the worker on the other side"
        assert proxy.stats.reconnects == 1
