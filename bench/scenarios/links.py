"""Many links on one server process: aggregate throughput, and server memory per idle link.

Each bus link is a ``voice-<i>`` worker and its proxy client, with a runner of its own (see
:mod:`bench.clients` for why not one runner), all in this process. The baseline is as many
plain websockets connections to the echo server. Both servers are fresh processes each round,
so the memory of earlier scenarios does not blur the per-link figure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from ..clients import BusLink, RawLink, close_all, open_all, text_payload
from ..procs import ServerProcess, ServerSpec
from . import Context, Row, Scenario, cpu_rows
from .common import pipeline
from .latency import PAYLOAD

SETTLE = 0.5  # seconds between the last handshake and reading the server's RSS


def scenario(deflate: bool, levels: Sequence[int]) -> Scenario:
    top = max(levels)
    first = min(levels)

    async def run_round(ctx: Context) -> dict[str, float]:
        data = text_payload(PAYLOAD)
        raw_data = data.encode()
        echo = ServerProcess(ServerSpec("echo", deflate))
        bus = ServerProcess(ServerSpec("bus", deflate))
        figures: dict[str, float] = {}
        try:
            await asyncio.gather(echo.start(), bus.start())

            async def raw_send(link: RawLink, seq: int) -> None:
                await link.send(seq, raw_data)

            async def bus_send(link: BusLink, seq: int) -> None:
                await link.send_text(seq, data)

            def raw_link() -> RawLink:
                return RawLink(echo.url("/echo"), deflate=deflate)

            def bus_link() -> BusLink:
                return BusLink(bus.url(""), ctx.name(), deflate=deflate)

            figures.update(await _measure(ctx, "baseline", echo, raw_link, raw_send, levels))
            figures.update(await _measure(ctx, "bus", bus, bus_link, bus_send, levels))
        finally:
            await asyncio.gather(echo.stop(), bus.stop())
        return figures

    rows = [
        Row(
            f"server memory per idle link, {top}",
            "bytes",
            "baseline.bytes_per_link",
            "bus.bytes_per_link",
            "lower",
            1.5,
            digits=0,
        )
    ]
    for n in levels:
        rows.append(
            Row(
                f"aggregate, {n} link{'s' if n > 1 else ''}",
                "msg/s",
                f"baseline.links_{n}.msgs_per_s",
                f"bus.links_{n}.msgs_per_s",
                "higher",
                digits=0,
            )
        )
    for who, target in (("baseline", None), ("bus", 0.8)):
        rows.append(
            Row(
                f"{who}: {top} vs {first} link",
                "msg/s",
                f"{who}.links_{first}.msgs_per_s",
                f"{who}.links_{top}.msgs_per_s",
                "higher",
                target,
                ref_name=f"{first} link",
                value_name=f"{top} links",
                digits=0,
            )
        )
    rows.extend(cpu_rows(f"links_{top}.", f"{top} links"))
    checks = tuple(
        f"{who}.{step}.{what}"
        for who in ("baseline", "bus")
        for step in ("warmup", "ping", *(f"links_{n}" for n in levels))
        for what in ("lost", "reordered")
    )
    return Scenario(
        name="links",
        variant=f"deflate={'on' if deflate else 'off'}",
        run_round=run_round,
        rows=tuple(rows),
        checks=checks,
        expected=tuple(f"{who}.bytes_per_link" for who in ("baseline", "bus"))
        + tuple(f"{who}.links_{n}.msgs_per_s" for who in ("baseline", "bus") for n in levels),
    )


async def _measure(
    ctx: Context,
    who: str,
    server: ServerProcess,
    make: Callable[[], RawLink | BusLink],
    send: Callable[..., Awaitable[None]],
    levels: Sequence[int],
) -> dict[str, float]:
    counts = ctx.counts
    figures: dict[str, float] = {}
    top = max(levels)
    links: list[RawLink | BusLink] = []
    try:
        # One link first: it warms the server up (lazy imports, first allocations), so the
        # memory figure below is what further links cost.
        links.append(make())
        await open_all(links)
        warm = await pipeline(links, counts.links_min, send)
        figures[f"{who}.warmup.lost"] = warm["lost"]
        figures[f"{who}.warmup.reordered"] = warm["reordered"]
        await asyncio.sleep(SETTLE)
        before = server.rss()

        idle = [make() for _ in range(top)]
        await open_all(idle)
        links.extend(idle)
        # One round trip on each, so both ends have finished setting the link up.
        ping = await pipeline(idle, 1, send)
        figures[f"{who}.ping.lost"] = ping["lost"]
        figures[f"{who}.ping.reordered"] = ping["reordered"]
        await asyncio.sleep(SETTLE)
        after = server.rss()
        figures[f"{who}.rss_before"] = before
        figures[f"{who}.rss_after"] = after
        figures[f"{who}.bytes_per_link"] = (after - before) / top

        for n in levels:
            per_link = max(counts.links_min, counts.links_total // n)
            result = await pipeline(links[1 : n + 1], per_link, send, server)
            figures.update({f"{who}.links_{n}.{k}": v for k, v in result.items()})
    finally:
        await close_all(links)
    return figures
