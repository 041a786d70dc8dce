"""Round-trip latency, one message in flight: plain websockets vs the bus."""

from __future__ import annotations

from ..clients import BusLink, RawLink, close_all, text_payload
from ..procs import ServerSpec
from . import Context, Row, Scenario
from .common import bus_ping_pong, raw_ping_pong

PAYLOAD = 200  # bytes of payload per message


def scenario(deflate: bool) -> Scenario:
    async def run_round(ctx: Context) -> dict[str, float]:
        counts = ctx.counts
        data = text_payload(PAYLOAD)
        echo = await ctx.pool.get(ServerSpec("echo", deflate))
        bus = await ctx.pool.get(ServerSpec("bus", deflate))
        figures: dict[str, float] = {}

        # The echo, then the echo answering from a task of its own.
        for key, path in (("baseline", "/echo"), ("hop", "/echo-hop")):
            raw = RawLink(echo.url(path), deflate=deflate)
            try:
                await raw.open()
                result = await raw_ping_pong(
                    raw, counts.latency, counts.latency_warmup, data.encode(), echo
                )
            finally:
                await close_all([raw])
            figures.update({f"{key}.{k}": v for k, v in result.items()})

        link = BusLink(bus.url(""), ctx.name(), deflate=deflate)
        try:
            await link.open()
            result = await bus_ping_pong(link, counts.latency, counts.latency_warmup, data, bus)
        finally:
            await close_all([link])
        figures.update({f"bus.{k}": v for k, v in result.items()})
        figures["round_trips"] = counts.latency
        return figures

    return Scenario(
        name="latency",
        variant=f"deflate={'on' if deflate else 'off'}",
        run_round=run_round,
        rows=(
            Row("round trip p50", "ms", "baseline.p50_ms", "bus.p50_ms", "lower", 1.3, digits=3),
            Row("round trip p99", "ms", "baseline.p99_ms", "bus.p99_ms", "lower", 1.5, digits=3),
            # What a worker apart from the reader costs by itself (the echo answering from a
            # task of its own), and the bus against that floor.
            Row("p50: echo, answer from a task", "ms", "baseline.p50_ms", "hop.p50_ms", "lower",
                digits=3),
            Row("p50: bus vs that echo", "ms", "hop.p50_ms", "bus.p50_ms", "lower", digits=3),
            Row(
                "client CPU / round trip",
                "us",
                "baseline.client_cpu_us",
                "bus.client_cpu_us",
                "lower",
                digits=0,
            ),
            Row(
                "server CPU / round trip",
                "us",
                "baseline.server_cpu_us",
                "bus.server_cpu_us",
                "lower",
                digits=0,
            ),
        ),
        checks=(
            "baseline.lost",
            "baseline.reordered",
            "hop.lost",
            "hop.reordered",
            "bus.lost",
            "bus.reordered",
        ),
        expected=("baseline.p50_ms", "baseline.p99_ms", "bus.p50_ms", "bus.p99_ms"),
    )
