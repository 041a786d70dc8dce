"""The documented multi-process deployment: gateways under ``uvicorn --workers 2`` and the
assistant in another process, sharing one bus through a real Redis."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from example_app.client import run_client
from tests.redis_support import ROOT, free_port, redis_url

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@asynccontextmanager
async def process(
    *args: str, env: dict[str, str], ready: bytes, count: int = 1
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Start a process and wait until ``ready`` appeared ``count`` times in its output."""
    proc = await asyncio.create_subprocess_exec(
        *args,
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    seen = 0
    with anyio.fail_after(30):
        while seen < count:
            line = await proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{args} exited before it was ready")
            seen += ready in line
    drain = asyncio.get_running_loop().create_task(_drain(proc))
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
        with anyio.fail_after(15):
            await proc.wait()
            await drain


async def _drain(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdout is not None
    while await proc.stdout.readline():
        pass


async def test_gateways_under_two_uvicorn_workers_reach_the_assistant_elsewhere() -> None:
    async with redis_url() as url:
        env = {
            "BUSPROXY_BUS_URL": url,
            "BUSPROXY_BEARER_TOKENS": '{"t": "tester"}',
        }
        port = free_port()
        async with (
            process(
                sys.executable,
                "-m",
                "example_app",
                "assistant",
                env=env,
                ready=b"[assistant] ready",
            ),
            process(
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "example_app.server:create_gateway",
                "--workers",
                "2",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--ws",
                "websockets-sansio",
                env=env,
                ready=b"Application startup complete",
                count=2,
            ),
        ):
            url_of = f"ws://127.0.0.1:{port}/ws/{{}}"
            for caller in ("alice", "bob", "carol"):
                answers = await run_client(
                    url_of.format(caller), token="t", name=caller, out=lambda line: None
                )
                assert [a["caller"] for a in answers if a] == [caller, caller]
