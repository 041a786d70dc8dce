"""A real Redis for tests: our own redis-server on a free port, or BUSPROXY_TEST_REDIS_URL.

The server is ready when it says so on its standard output ("Ready to accept connections"):
the fixture waits for that line, not for the clock.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from tests.servers import listening_socket

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    sock = listening_socket(0)
    port = int(sock.getsockname()[1])
    sock.close()
    return port


class RedisServer:
    """A redis-server of our own. With ``data_dir`` it persists every write (an append-only
    file fsynced always) there, and a restart finds its data again."""

    def __init__(self, port: int, data_dir: Path | None = None) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.data_dir = data_dir
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
        if self.data_dir is None:
            persistence = ["--appendonly", "no"]
        else:
            persistence = ["--appendonly", "yes", "--appendfsync", "always"]
            persistence += ["--dir", str(self.data_dir)]
        self.process = await asyncio.create_subprocess_exec(
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            *persistence,
            "--loglevel",
            "notice",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert self.process.stdout is not None
        with anyio.fail_after(10):
            while True:
                line = await self.process.stdout.readline()
                if not line:
                    raise RuntimeError(f"redis-server on port {self.port} exited")
                if b"Ready to accept connections" in line:
                    break
        # Keep reading its output so the pipe never fills.
        self._drain = asyncio.get_running_loop().create_task(self._read_rest())

    async def _read_rest(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        while await self.process.stdout.readline():
            pass

    async def stop(self) -> None:
        """Kill it (SIGKILL): what it did not persist is gone."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
            await self._drain
        self.process = None

    async def terminate(self) -> None:
        """Stop it as an operator does (SIGTERM): it writes and closes its files first."""
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await asyncio.wait_for(self.process.wait(), 10)
            await self._drain
        self.process = None


@asynccontextmanager
async def redis_server(
    port: int | None = None, data_dir: Path | None = None
) -> AsyncIterator[RedisServer]:
    server = RedisServer(port or free_port(), data_dir)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@asynccontextmanager
async def redis_url() -> AsyncIterator[str]:
    """A Redis URL for one test: BUSPROXY_TEST_REDIS_URL if set, else our own server."""
    given = os.environ.get("BUSPROXY_TEST_REDIS_URL")
    if given:
        yield given
        return
    async with redis_server() as server:
        yield server.url


class Node:
    """A separate OS process running ``tests.redis_node`` (a runner on a RedisBus)."""

    def __init__(self, process: asyncio.subprocess.Process, pid: int) -> None:
        self.process = process
        self.pid = pid

    async def terminate(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
        await asyncio.wait_for(self.process.wait(), 10)

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        await asyncio.wait_for(self.process.wait(), 10)


@asynccontextmanager
async def node(url: str, worker: str, prefix: str, **options: float) -> AsyncIterator[Node]:
    args = [sys.executable, "-m", "tests.redis_node", "--url", url, "--worker", worker]
    args += ["--prefix", prefix]
    for key, value in options.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    process = await asyncio.create_subprocess_exec(
        *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=None
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 20)
    if not line.startswith(b"READY"):
        process.kill()
        await process.wait()
        raise RuntimeError(f"node {worker} did not start: {line!r}")
    running = Node(process, int(line.split()[1]))
    try:
        yield running
    finally:
        await running.kill()
