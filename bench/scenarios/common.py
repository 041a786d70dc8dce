"""Traffic patterns shared by the scenarios: ping-pong, pipelining, paced load."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from ..clients import BusLink, Countdown, RawLink, now, wait_replies
from ..procs import ServerProcess
from ..stats import OrderCheck, percentile

L = TypeVar("L", RawLink, BusLink)
Send = Callable[[L, int], Awaitable[None]]

REPLY_TIMEOUT = 5.0  # a round trip that takes longer counts as lost
IDLE_TIMEOUT = 5.0  # a pipeline with no reply for this long is over; the rest is lost


class CpuMeter:
    """Share of one core the server process and this (client) process used over a span."""

    def __init__(self, server: ServerProcess | None) -> None:
        self.server = server
        self._started = now()
        self._client = time.process_time()
        self._server = server.cpu_seconds() if server is not None else 0.0

    def figures(self, items: int = 0) -> dict[str, float]:
        """``<side>_cpu_pct``, and with ``items``, ``<side>_cpu_us`` (CPU per item)."""
        elapsed = max(now() - self._started, 1e-9)
        used = {"client": time.process_time() - self._client}
        if self.server is not None and self.server.alive():
            used["server"] = self.server.cpu_seconds() - self._server
        figures = {f"{side}_cpu_pct": cpu / elapsed * 100 for side, cpu in used.items()}
        if items:
            figures.update({f"{side}_cpu_us": cpu / items * 1e6 for side, cpu in used.items()})
        return figures


async def raw_ping_pong(
    link: RawLink, n: int, warmup: int, payload: bytes, server: ServerProcess | None = None
) -> dict[str, float]:
    """``n`` round trips, one in flight, with the plain client's own send/recv."""
    rtts: list[float] = []
    lost = reordered = 0
    meter: CpuMeter | None = None
    for i in range(-warmup, n):
        if i == 0:
            meter = CpuMeter(server)
        seq = i + warmup
        started = now()
        await link.send(seq, payload)
        try:
            async with asyncio.timeout(REPLY_TIMEOUT):
                got = await link.recv_seq()
        except TimeoutError:
            lost += 1
            continue
        if got != seq:
            reordered += 1
        elif i >= 0:
            rtts.append(now() - started)
    return _latency_figures(rtts, lost, reordered, meter, n)


async def bus_ping_pong(
    link: BusLink, n: int, warmup: int, data: str, server: ServerProcess | None = None
) -> dict[str, float]:
    """``n`` round trips through the bus, one in flight; the reply resolves a future."""
    loop = asyncio.get_running_loop()
    rtts: list[float] = []
    lost = reordered = 0
    meter: CpuMeter | None = None
    waiting: dict[int, asyncio.Future[None]] = {}

    def on_reply(seq: int) -> None:
        nonlocal reordered
        future = waiting.pop(seq, None)
        if future is None:
            reordered += 1  # a late reply to a round trip already counted as lost
        elif not future.done():
            future.set_result(None)

    link.on_reply = on_reply
    try:
        for i in range(-warmup, n):
            if i == 0:
                meter = CpuMeter(server)
            seq = i + warmup
            future = waiting[seq] = loop.create_future()
            started = now()
            await link.send_text(seq, data)
            try:
                async with asyncio.timeout(REPLY_TIMEOUT):
                    await future
            except TimeoutError:
                waiting.pop(seq, None)
                lost += 1
                continue
            if i >= 0:
                rtts.append(now() - started)
    finally:
        link.on_reply = None
    return _latency_figures(rtts, lost, reordered, meter, n)


def _latency_figures(
    rtts: list[float], lost: int, reordered: int, meter: CpuMeter | None, n: int
) -> dict[str, float]:
    return {
        **(meter.figures(n) if meter is not None else {}),
        "p50_ms": percentile(rtts, 50) * 1000,
        "p99_ms": percentile(rtts, 99) * 1000,
        "lost": lost,
        "reordered": reordered,
    }


async def pipeline(
    links: Sequence[L], per_link: int, send: Send[L], server: ServerProcess | None = None
) -> dict[str, float]:
    """Every link sends ``per_link`` messages at once while its replies are counted.

    Returns the replies per second (all links together, from the first send to the last
    reply), and how many were lost or came back out of order.
    """
    checks = [OrderCheck(per_link) for _ in links]
    countdown = Countdown(per_link * len(links))
    last_reply = 0.0

    def watcher(check: OrderCheck) -> Callable[[int], None]:
        def on_reply(seq: int) -> None:
            nonlocal last_reply
            if 0 <= seq < per_link and check.see(seq):
                last_reply = now()
                countdown.tick()

        return on_reply

    for link, check in zip(links, checks, strict=True):
        link.on_reply = watcher(check)
        link.start_reading()

    async def sender(link: L) -> None:
        for seq in range(per_link):
            await send(link, seq)

    started = now()
    meter = CpuMeter(server)
    try:
        async with asyncio.TaskGroup() as group:
            for link in links:
                group.create_task(sender(link))
        await wait_replies(checks, countdown.event, IDLE_TIMEOUT)
    finally:
        for link in links:
            link.on_reply = None
    received = sum(c.received for c in checks)
    elapsed = (last_reply or now()) - started
    return {
        **meter.figures(),
        "msgs_per_s": received / elapsed if received and elapsed > 0 else 0.0,
        "elapsed_s": elapsed,
        "messages": per_link * len(links),
        "lost": sum(c.lost for c in checks),
        "reordered": sum(c.reordered for c in checks),
    }


async def paced(
    links: Sequence[L],
    seconds: float,
    rate: int,
    send: Send[L],
    server: ServerProcess | None = None,
) -> dict[str, float]:
    """Every link sends ``rate`` messages a second for ``seconds``, each answered.

    The round trip is measured from when a message was due (so a sender that falls behind
    shows up as latency), until its reply arrives. Late replies are waited for (they count in
    the percentiles); a reply is lost only when nothing at all arrives for ``IDLE_TIMEOUT``.
    """
    # perf_counter, not loop.time(): uvloop's clock ticks in whole milliseconds.
    per_link = max(1, int(seconds * rate))
    interval = 1.0 / rate
    start = now() + 0.05
    checks = [OrderCheck(per_link) for _ in links]
    countdown = Countdown(per_link * len(links))
    rtts: list[float] = []
    phases = [interval * i / max(1, len(links)) for i in range(len(links))]

    def watcher(check: OrderCheck, phase: float) -> Callable[[int], None]:
        def on_reply(seq: int) -> None:
            if 0 <= seq < per_link and check.see(seq):
                rtts.append(now() - (start + phase + seq * interval))
                countdown.tick()

        return on_reply

    for link, check, phase in zip(links, checks, phases, strict=True):
        link.on_reply = watcher(check, phase)
        link.start_reading()

    async def sender(link: L, phase: float) -> None:
        for seq in range(per_link):
            delay = start + phase + seq * interval - now()
            if delay > 0:
                await asyncio.sleep(delay)
            await send(link, seq)

    meter = CpuMeter(server)
    try:
        async with asyncio.TaskGroup() as group:
            for link, phase in zip(links, phases, strict=True):
                group.create_task(sender(link, phase))
        await wait_replies(checks, countdown.event, IDLE_TIMEOUT)
    finally:
        for link in links:
            link.on_reply = None
    return {
        **meter.figures(),
        "p50_ms": percentile(rtts, 50) * 1000,
        "p99_ms": percentile(rtts, 99) * 1000,
        "messages": per_link * len(links),
        "lost": sum(c.lost for c in checks),
        "reordered": sum(c.reordered for c in checks),
    }
