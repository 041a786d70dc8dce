"""One peer cannot exhaust the server: floods against a real uvicorn server in its own process.

The server (``tests/flood/server.py``) is wired as the reference page shows: an app-wide
runner, one shared worker answering jobs, a proxy per connection. Flooders are raw WebSocket
clients without compression (alike messages would compress to a few bytes and hide in the
kernel's buffers) that send job requests as fast as the server takes them and never read the
answers. Meanwhile a well-behaved peer runs a job every 0.25 s on the same shared worker.

What must hold: the server's memory stays bounded (it stops reading a flooder's socket, and
closes a link whose answers cannot be written within ``send_timeout``), the well-behaved peer
gets every answer, and a new link is served at once afterwards. Loops are bounded in count and
time; only 127.0.0.1 is used.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from fastapi_busproxy import (
    BaseWorker,
    BusJobRequestMessage,
    BusProxySettings,
    JobParams,
    JSONMessageSerializer,
    WebSocketProxyClient,
    WorkerRunner,
)
from fastapi_busproxy.proxy import ReconnectPolicy
from tests.interop.side_process import SideProcess

pytestmark = [pytest.mark.anyio, pytest.mark.uvicorn, pytest.mark.timeout(150)]

REPO = Path(__file__).resolve().parent.parent
FLOOD_SECONDS = 25.0
POLITE_EVERY = 0.25
MiB = 1024 * 1024

# Small per-link queues, so that the budget per link is a meaningful bound.
SETTINGS = {
    "bus_queue_size": 64,
    "send_queue_size": 64,
    "max_message_size": 16_384,
    "max_jobs_per_source": 8,
    "send_timeout": 5.0,
}
BUDGET = BusProxySettings(**SETTINGS).link_memory_budget()  # type: ignore[arg-type]
ENV = {f"BUSPROXY_{key.upper()}": str(value) for key, value in SETTINGS.items()}


def rss(pid: int) -> int:
    """Resident memory of process ``pid``, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


@dataclass
class Flooder:
    """A raw peer that sends job requests as fast as they are taken and never reads."""

    url: str
    name: str
    sent: int = 0
    connections: int = 0
    closes: list[int | None] = field(default_factory=list)

    async def run(self, until: float) -> None:
        loop = asyncio.get_running_loop()
        codec = JSONMessageSerializer()
        pad = "x" * 200
        # Bounded: the deadline, and at most 200 connections (a closed link reconnects).
        while loop.time() < until and self.connections < 200:
            # A small receive buffer, set before connecting (which turns the kernel's
            # autotuning off): the server's writes stall within a few answers, as they would
            # behind a slow network, rather than after megabytes of loopback buffers.
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            try:
                host, port = self.url.split("/")[2].split(":")
                await asyncio.wait_for(loop.sock_connect(sock, (host, int(port))), 5)
                ws = await connect(
                    self.url, sock=sock, compression=None, ping_interval=None, open_timeout=5
                )
            except (OSError, InvalidHandshake, asyncio.TimeoutError):
                sock.close()
                continue
            self.connections += 1
            try:
                while (left := until - loop.time()) > 0:
                    frame = codec.serialize(
                        BusJobRequestMessage(
                            source=self.name,
                            target="shared",
                            job_id=f"{self.name}-{self.sent}",
                            job_name="echo",
                            payload={"n": self.sent, "pad": pad},
                        )
                    )
                    await asyncio.wait_for(ws.send(frame), left)
                    self.sent += 1
            except ConnectionClosed as closed:
                self.closes.append(closed.rcvd.code if closed.rcvd else None)
            except asyncio.TimeoutError:
                pass
            finally:
                # An attacker does not say goodbye (and a close handshake would wait on a
                # server that no longer reads us).
                ws.transport.abort()


class Polite:
    """A well-behaved peer: our client proxy and a worker running one job every 0.25 s."""

    def __init__(self, url: str, name: str) -> None:
        self.runner = WorkerRunner(name=f"client-{name}", handle_sigint=False)
        self.worker = BaseWorker(name)
        self.proxy = WebSocketProxyClient(
            "link",
            url=url,
            remote_worker_name="shared",
            local_worker_name=name,
            active=True,
            compression=None,
            reconnect=ReconnectPolicy(max_attempts=3),
        )
        self.asked = 0
        self.answered: list[int] = []

    async def __aenter__(self) -> Polite:
        await self.runner.start()
        await self.runner.add_workers(self.worker, self.proxy)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cancel("test over")

    async def ask(self, n: int, timeout: float = 30.0) -> dict[str, Any]:
        params = JobParams(name="echo", payload={"n": n}, timeout=timeout)
        async with self.worker.job("shared", params=params) as job:
            pass
        return job.response

    async def run(self, until: float) -> None:
        loop = asyncio.get_running_loop()
        while loop.time() < until and self.asked < 1000:
            n = self.asked
            self.asked += 1
            response = await self.ask(n)
            assert response == {"echo": {"n": n}, "for": self.worker.name}
            self.answered.append(n)
            await asyncio.sleep(POLITE_EVERY)  # the peer's pace, not a wait for something


async def sample_rss(pid: int, until: float, peak: list[int]) -> None:
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        peak[0] = max(peak[0], rss(pid))
        await asyncio.sleep(0.2)  # a sampling period, not a wait for something
    peak[0] = max(peak[0], rss(pid))


async def flood_scenario(flooders: int) -> tuple[int, list[Flooder], Polite, str]:
    """Run ``flooders`` flooders and a polite peer for FLOOD_SECONDS; return RSS growth."""
    async with SideProcess.run(
        sys.executable, "-m", "tests.flood.server", env={**ENV, "PYTHONPATH": str(REPO)}
    ) as server:
        port = int((await server.line_starting_with("READY ", 30)).split()[1])
        pid = server.process.pid
        base = f"ws://127.0.0.1:{port}/ws"
        async with Polite(f"{base}/polite", "polite") as polite:
            # Warm up: the first job pays imports and first-use costs, not the flood.
            assert await polite.ask(-1) == {"echo": {"n": -1}, "for": "polite"}
            before = rss(pid)
            loop = asyncio.get_running_loop()
            until = loop.time() + FLOOD_SECONDS
            peak = [before]
            floods = [Flooder(f"{base}/flood-{i}", f"flood-{i}") for i in range(flooders)]
            await asyncio.gather(
                *(flooder.run(until) for flooder in floods),
                polite.run(until),
                sample_rss(pid, until, peak),
            )
            # Afterwards a new link is served at once.
            async with Polite(f"{base}/newcomer", "newcomer") as newcomer:
                assert await newcomer.ask(0, timeout=5) == {"echo": {"n": 0}, "for": "newcomer"}
        assert server.process.returncode is None, server.report()
    return peak[0] - before, floods, polite, server.stderr


def check_flood(floods: list[Flooder], polite: Polite, log: str) -> None:
    for flooder in floods:
        assert flooder.connections >= 1
        assert flooder.sent > 100, f"{flooder.name} did not flood: {flooder.sent} sent"
    assert polite.asked >= 5  # it kept asking (how fast is the benchmark's to judge)...
    assert polite.answered == list(range(polite.asked))  # ...and got every answer
    # A flooder's link whose answers could not be written within send_timeout was closed,
    # and the log names the peer.
    assert "(4000 peer too slow)" in log, log[-3000:]
    assert "(peer 127.0.0.1:" in log


async def test_one_flooder_cannot_exhaust_the_server() -> None:
    growth, floods, polite, log = await flood_scenario(1)
    check_flood(floods, polite, log)
    assert growth < 64 * MiB, f"the server grew by {growth / MiB:.1f} MiB"


async def test_twenty_flooders_stay_within_their_budgets() -> None:
    growth, floods, polite, log = await flood_scenario(20)
    check_flood(floods, polite, log)
    limit = 64 * MiB + 20 * BUDGET
    assert growth < limit, f"the server grew by {growth / MiB:.1f} MiB (limit {limit / MiB:.0f})"

