"""Pipelined throughput on one link: plain websockets vs the bus."""

from __future__ import annotations

from ..clients import BusLink, RawLink, close_all, text_payload
from ..procs import ServerSpec
from . import Context, Row, Scenario, cpu_rows
from .common import pipeline
from .latency import PAYLOAD


def scenario(deflate: bool) -> Scenario:
    async def run_round(ctx: Context) -> dict[str, float]:
        n = ctx.counts.throughput
        data = text_payload(PAYLOAD)
        raw_data = data.encode()
        echo = await ctx.pool.get(ServerSpec("echo", deflate))
        bus = await ctx.pool.get(ServerSpec("bus", deflate))
        figures: dict[str, float] = {}

        async def raw_send(link: RawLink, seq: int) -> None:
            await link.send(seq, raw_data)

        async def bus_send(link: BusLink, seq: int) -> None:
            await link.send_text(seq, data)

        raw = RawLink(echo.url("/echo"), deflate=deflate)
        try:
            await raw.open()
            result = await pipeline([raw], n, raw_send, echo)
        finally:
            await close_all([raw])
        figures.update({f"baseline.{k}": v for k, v in result.items()})

        link = BusLink(bus.url(""), ctx.name(), deflate=deflate)
        try:
            await link.open()
            result = await pipeline([link], n, bus_send, bus)
        finally:
            await close_all([link])
        figures.update({f"bus.{k}": v for k, v in result.items()})

        # The same through the reference page's endpoint form (upgraded in band).
        link = BusLink(bus.url(""), ctx.name(), deflate=deflate, route="hand")
        try:
            await link.open()
            result = await pipeline([link], n, bus_send, bus)
        finally:
            await close_all([link])
        figures.update({f"hand.{k}": v for k, v in result.items()})
        return figures

    return Scenario(
        name="throughput",
        variant=f"deflate={'on' if deflate else 'off'}",
        run_round=run_round,
        rows=(
            Row(
                "pipelined round trips",
                "msg/s",
                "baseline.msgs_per_s",
                "bus.msgs_per_s",
                "higher",
                0.6,
                digits=0,
            ),
            Row(
                "pipelined, hand-wired endpoint",
                "msg/s",
                "baseline.msgs_per_s",
                "hand.msgs_per_s",
                "higher",
                0.6,
                value_name="hand-wired",
                digits=0,
            ),
            *cpu_rows("", "pipelining"),
        ),
        checks=(
            "baseline.lost",
            "baseline.reordered",
            "bus.lost",
            "bus.reordered",
            "hand.lost",
            "hand.reordered",
        ),
        expected=("baseline.msgs_per_s", "bus.msgs_per_s", "hand.msgs_per_s"),
    )
