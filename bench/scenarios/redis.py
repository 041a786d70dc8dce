"""The Redis bus's two delivery modes, measured against each other in the same run.

Two runners in this process, each on its own ``RedisBus`` on one redis-server of the run's own
(on 127.0.0.1, a free port): a worker on one sends numbered messages to a worker on the other.
The baseline is pub/sub; durable mode runs on the same server (no persistence), and again on a
second server that persists every write (``appendfsync always``), as durable mode's guarantee
needs. Latency: one message in flight, there and back. Throughput: one sender, each ``send``
awaited (it returns once Redis has the message), until the other side has them all. Then the
same latency from a client's worker to a worker on an app on that bus, through the plugin and a
resumable link (uvicorn and the client in this process too).
"""

from __future__ import annotations

import asyncio
import functools
import shutil
import socket
import statistics
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..clients import now
from ..stats import percentile
from . import Context, Row, Scenario

MODES = ("pubsub", "durable", "durable_fsync")


def available() -> bool:
    try:
        import redis  # noqa: F401
    except ImportError:
        return False
    return shutil.which("redis-server") is not None


@asynccontextmanager
async def redis_server(data_dir: Path | None) -> AsyncIterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    if data_dir is None:
        args += ["--appendonly", "no"]
    else:
        args += ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(data_dir)]
    process = await asyncio.create_subprocess_exec(
        "redis-server", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    assert process.stdout is not None
    async with asyncio.timeout(10):
        while b"Ready to accept connections" not in await process.stdout.readline():
            if process.returncode is not None:
                raise RuntimeError("redis-server did not start")
    drain = asyncio.get_running_loop().create_task(process.stdout.read())
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.kill()
        await process.wait()
        await drain


@functools.cache
def _kinds() -> tuple[Any, Any, Any]:
    """The scenario's message and workers, made once (the message's wire name is registered
    once): ``Numbered``; ``Echo``, which answers each to ``ping``; ``Sink``, which keeps the
    numbers it gets."""
    from fastapi_busproxy import BaseWorker, BusDataMessage, BusMessage

    @dataclass(kw_only=True)
    class Numbered(BusDataMessage):
        n: int

    class Echo(BaseWorker):
        async def on_bus_message(self, message: BusMessage) -> None:
            if isinstance(message, Numbered):
                await self.send_bus_message(Numbered(source=self.name, target="ping", n=message.n))
            else:
                await super().on_bus_message(message)

    class Sink(BaseWorker):
        def __init__(self, name: str) -> None:
            super().__init__(name)
            self.got: list[int] = []
            self.arrived = asyncio.Event()

        async def on_bus_message(self, message: BusMessage) -> None:
            if isinstance(message, Numbered):
                self.got.append(message.n)
                self.arrived.set()
            else:
                await super().on_bus_message(message)

        async def wait_last(self, n: int) -> None:
            while self.got[-1:] != [n]:
                self.arrived.clear()
                await self.arrived.wait()

    return Numbered, Echo, Sink


async def _round_trips(ping: Any, count: int) -> list[float]:
    """``count`` round trips from ``ping`` to ``echo`` and back, one at a time, in ms."""
    numbered = _kinds()[0]
    rtts = []
    for n in range(count):
        started = now()
        await ping.send_bus_message(numbered(source="ping", target="echo", n=n))
        async with asyncio.timeout(10):
            await ping.wait_last(n)
        rtts.append((now() - started) * 1000)
    return rtts


async def _measure(url: str, delivery: str, latency_n: int, throughput_n: int) -> dict[str, float]:
    from fastapi_busproxy import WorkerRunner
    from fastapi_busproxy.redis import RedisBus

    numbered, echo_kind, sink_kind = _kinds()
    prefix = f"bench-{uuid.uuid4().hex[:8]}"

    def bus() -> RedisBus:
        return RedisBus(url, prefix=prefix, delivery=delivery)  # type: ignore[arg-type]

    here, there = WorkerRunner(name="here", bus=bus()), WorkerRunner(name="there", bus=bus())
    ping, echo, sink = sink_kind("ping"), echo_kind("echo"), sink_kind("sink")
    figures: dict[str, float] = {}
    async with here, there:
        await here.add_workers(ping)
        await there.add_workers(echo, sink)
        await here.registry.wait_ready("echo", timeout=10)
        rtts = await _round_trips(ping, latency_n)
        figures["p50_ms"] = statistics.median(rtts)
        figures["p99_ms"] = percentile(rtts, 99)
        started = now()
        for n in range(throughput_n):
            await ping.send_bus_message(numbered(source="ping", target="sink", n=n))
        async with asyncio.timeout(60):
            while len(sink.got) < throughput_n:
                sink.arrived.clear()
                await sink.arrived.wait()
        figures["msgs_per_s"] = throughput_n / (now() - started)
        figures["lost"] = float(throughput_n - len(set(sink.got)))
        got = sink.got
        figures["reordered"] = float(sum(1 for i in range(1, len(got)) if got[i] < got[i - 1]))
    return figures


async def _measure_link(url: str, delivery: str, latency_n: int) -> dict[str, float]:
    """A client's worker and a worker on an app's durable or pub/sub Redis bus, through the
    plugin and a resumable link (in durable mode the instance keeps what it sends the client in
    Redis before writing it, and its own workers' messages to the client go through a stream):
    one message in flight, there and back."""
    from fastapi import FastAPI

    from fastapi_busproxy import (
        BusProxySettings,
        WebSocketProxyClient,
        WorkerRunner,
        configure_bus,
        include_bus_proxy,
        runner_of,
    )
    from fastapi_busproxy.testing import running_app

    _, echo_kind, sink_kind = _kinds()
    app = FastAPI()  # each mode on a Redis of its own, or after the other is gone
    configure_bus(app, settings=BusProxySettings(bus_url=url, bus_delivery=delivery))
    include_bus_proxy(app, "/ws", "echo", remote_worker_name="ping")
    async with running_app(app) as base:
        await runner_of(app).add_workers(echo_kind("echo"))
        client = WorkerRunner(name="client")
        ping = sink_kind("ping")
        proxy = WebSocketProxyClient(
            "link",
            url=f"{base}/ws",
            remote_worker_name="echo",
            local_worker_name="ping",
            active=True,
        )
        async with client:
            await client.add_workers(ping, proxy)
            await client.registry.wait_ready("echo", timeout=10)
            rtts = await _round_trips(ping, latency_n)
    return {"p50_ms": statistics.median(rtts), "p99_ms": percentile(rtts, 99)}


async def run_round(ctx: Context) -> dict[str, float]:
    latency_n = max(100, ctx.counts.latency // 10)
    throughput_n = max(500, ctx.counts.throughput // 10)
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as data_dir:
        async with redis_server(None) as plain, redis_server(Path(data_dir)) as persisted:
            for mode in MODES:
                url = persisted if mode == "durable_fsync" else plain
                delivery = "pubsub" if mode == "pubsub" else "durable"
                result = await _measure(url, delivery, latency_n, throughput_n)
                figures.update({f"{mode}.{key}": value for key, value in result.items()})
            # After the buses' figures: an app and a client in this process leave work behind
            # for a while (closing handshakes, Redis connections).
            for mode in MODES:
                url = persisted if mode == "durable_fsync" else plain
                delivery = "pubsub" if mode == "pubsub" else "durable"
                result = await _measure_link(url, delivery, latency_n)
                figures.update({f"{mode}.link_{key}": value for key, value in result.items()})
    return figures


def scenario() -> Scenario:
    rows = []
    for mode, name in (("durable", "durable"), ("durable_fsync", "durable, fsync always")):
        rows += [
            Row(
                f"p50, {name} vs pub/sub",
                "ms",
                "pubsub.p50_ms",
                f"{mode}.p50_ms",
                "lower",
                ref_name="pub/sub",
                value_name=name,
                digits=3,
            ),
            Row(
                f"p99, {name} vs pub/sub",
                "ms",
                "pubsub.p99_ms",
                f"{mode}.p99_ms",
                "lower",
                ref_name="pub/sub",
                value_name=name,
                digits=3,
            ),
            Row(
                f"throughput, {name} vs pub/sub",
                "msg/s",
                "pubsub.msgs_per_s",
                f"{mode}.msgs_per_s",
                "higher",
                ref_name="pub/sub",
                value_name=name,
                digits=0,
            ),
        ]
        rows += [
            Row(
                f"p50 through a link, {name} vs pub/sub",
                "ms",
                "pubsub.link_p50_ms",
                f"{mode}.link_p50_ms",
                "lower",
                ref_name="pub/sub",
                value_name=name,
                digits=3,
            ),
        ]
    return Scenario(
        name="redis",
        variant="",
        run_round=run_round,
        rows=tuple(rows),
        checks=tuple(f"{mode}.{check}" for mode in MODES for check in ("lost", "reordered")),
        expected=tuple(f"{mode}.p50_ms" for mode in MODES),
    )
