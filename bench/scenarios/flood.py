"""A peer that floods a shared worker: how the other peers fare, and what the server holds.

A well-behaved peer (our client proxy) runs jobs one after another on the server's shared
worker, first alone, then while a flooder (a raw WebSocket client without compression) sends
job requests as fast as the server takes them and never reads the answers (measured once the
flood has filled what it can and the server pushes back on it). Measured for our
server (``include_bus_proxy``) and, when the pipecat-ai side venv is there, for the reference's
server wired as its documentation shows (``tests/interop/pipecat_server.py``): the polite peer's
p50/p99 with and without the flood, and how much the server's memory grew.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from fastapi_busproxy import (
    BaseWorker,
    BusJobRequestMessage,
    JobParams,
    JSONMessageSerializer,
    WebSocketProxyClient,
    WorkerRunner,
)
from fastapi_busproxy.proxy import ReconnectPolicy

from ..procs import ServerProcess, ServerSpec, pipecat_python
from ..stats import percentile
from . import Context, Row, Scenario

MiB = 1024 * 1024


class Target:
    """Where the peers connect, and under which names, on one kind of server."""

    def __init__(self, kind: str, server: ServerProcess, ctx: Context) -> None:
        self.kind = kind
        self.server = server
        if kind == "pipecat":  # one route; every connection is "voice" to worker "worker"
            self.worker = "worker"
            self.polite = ("voice", server.url("/ws"))
            self.flooder = ("voice", server.url("/ws"))
        else:
            self.worker = "echo"
            name = ctx.name("polite")
            self.polite = (name, server.url(f"/ws/{name}"))
            flooder = ctx.name("flooder")
            self.flooder = (flooder, server.url(f"/ws/{flooder}"))


async def saturated(sent: list[int], stop_after: float = 10.0) -> None:
    """Return once the flooder's sends have stalled for half a second (the server pushes back
    on it), or after ``stop_after`` seconds: the polite peer is measured in that steady state,
    not while the flood fills the queues."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + stop_after
    last, since = sent[0], loop.time()
    while loop.time() < deadline:
        await asyncio.sleep(0.05)  # a sampling period
        if sent[0] != last:
            last, since = sent[0], loop.time()
        elif loop.time() - since >= 0.5:
            return


async def flood(target: Target, stop: asyncio.Event, sent: list[int]) -> None:
    """Send job requests as fast as they are taken, never reading; bounded by ``stop``."""
    name, url = target.flooder
    codec = JSONMessageSerializer()
    pad = "x" * 200
    connections = 0
    while not stop.is_set() and connections < 100:
        try:
            ws = await connect(url, compression=None, ping_interval=None, open_timeout=5)
        except (OSError, InvalidHandshake, TimeoutError):
            continue
        connections += 1
        try:
            while not stop.is_set():
                frame = codec.serialize(
                    BusJobRequestMessage(
                        source=name,
                        target=target.worker,
                        job_id=f"{name}-{sent[0]}",
                        job_name="echo",
                        payload={"n": sent[0], "pad": pad},
                    )
                )
                sending = asyncio.ensure_future(ws.send(frame))
                stopping = asyncio.ensure_future(stop.wait())
                await asyncio.wait((sending, stopping), return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                if not sending.done():
                    sending.cancel()
                    break
                sending.result()
                sent[0] += 1
        except ConnectionClosed:
            pass
        finally:
            ws.transport.abort()  # an attacker does not say goodbye


@contextmanager
def instrument_gc_quiet() -> Iterator[None]:
    """Keep this process's (the measuring client's) garbage collector out of the samples: a
    full collection first, then everything alive frozen, so the collections that still come
    are short. The server's collector is untouched: it is part of what is measured."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


async def polite_round_trips(worker: BaseWorker, target: Target, jobs: int) -> list[float]:
    with instrument_gc_quiet():
        return await _polite_round_trips(worker, target, jobs)


async def _polite_round_trips(worker: BaseWorker, target: Target, jobs: int) -> list[float]:
    samples: list[float] = []
    for n in range(jobs):
        started = time.perf_counter()  # uvloop's clock counts whole milliseconds
        params = JobParams(name="echo", payload={"n": n}, timeout=60)
        async with worker.job(target.worker, params=params) as job:
            pass
        if job.response.get("echo") != {"n": n}:
            raise AssertionError(f"wrong answer {job.response} for {n}")
        samples.append(time.perf_counter() - started)
    return samples


async def measure(kind: str, ctx: Context) -> dict[str, float]:
    server = await ServerProcess(ServerSpec(kind)).start()
    jobs = ctx.counts.flood_jobs
    try:
        target = Target(kind, server, ctx)
        name, url = target.polite
        runner = WorkerRunner(name=f"bench-{name}", handle_sigint=False)
        worker = BaseWorker(name)
        proxy = WebSocketProxyClient(
            "link",
            url=url,
            remote_worker_name=target.worker,
            local_worker_name=name,
            active=True,
            compression=None,
            reconnect=ReconnectPolicy(max_attempts=3),
        )
        async with runner:
            await runner.add_workers(worker, proxy)
            await polite_round_trips(worker, target, 20)  # warm up
            quiet = await polite_round_trips(worker, target, jobs)
            before = server.rss()
            stop = asyncio.Event()
            sent = [0]
            flooding = asyncio.ensure_future(flood(target, stop, sent))
            peak = before
            try:
                await saturated(sent, 10.0 if jobs >= 100 else 3.0)
                peak = max(peak, server.rss())
                loaded_task = asyncio.ensure_future(polite_round_trips(worker, target, jobs))
                while not loaded_task.done():
                    peak = max(peak, server.rss())
                    await asyncio.wait((loaded_task,), timeout=0.1)  # a sampling period
                loaded = loaded_task.result()
            finally:
                stop.set()
                await flooding
            peak = max(peak, server.rss())
    finally:
        await server.stop()
    return {
        f"{kind}.quiet_p50_ms": percentile(quiet, 50) * 1000,
        f"{kind}.quiet_p99_ms": percentile(quiet, 99) * 1000,
        f"{kind}.flood_p50_ms": percentile(loaded, 50) * 1000,
        f"{kind}.flood_p99_ms": percentile(loaded, 99) * 1000,
        f"{kind}.rss_growth_mib": (peak - before) / MiB,
        f"{kind}.flood_sent": float(sent[0]),
    }


def scenario() -> Scenario:
    async def run_round(ctx: Context) -> dict[str, Any]:
        figures = await measure("bus", ctx)
        if pipecat_python() is not None:
            figures.update(await measure("pipecat", ctx))
        return figures

    def polite(kind: str, q: str, target: float | None) -> Row:
        return Row(
            f"{kind}: polite p{q}, flood vs none",
            "ms",
            f"{kind}.quiet_p{q}_ms",
            f"{kind}.flood_p{q}_ms",
            "lower",
            target,
            ref_name="no flood",
            value_name="flood",
            digits=2,
        )

    return Scenario(
        name="flood",
        variant="deflate=off",
        run_round=run_round,
        rows=(
            polite("bus", "50", None),
            polite("bus", "99", 2.0),
            polite("pipecat", "50", None),
            polite("pipecat", "99", None),
            Row(
                "server RSS growth under flood",
                "MiB",
                "pipecat.rss_growth_mib",
                "bus.rss_growth_mib",
                "lower",
                ref_name="pipecat",
                value_name="bus",
                digits=1,
            ),
        ),
        expected=("bus.quiet_p99_ms", "bus.flood_p99_ms", "bus.rss_growth_mib"),
    )
