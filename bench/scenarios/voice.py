"""Voice-like load: N sessions, each 50 messages/s of 640 binary bytes both ways.

A level passes when the round trips' p99 stays under 50 ms and nothing is lost or reordered;
levels grow until one fails. Run for plain websockets (the baseline), the bus with the default
JSON serializer (bytes travel in base64), and the bus with MessagePack when the package has it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from ..clients import BusLink, RawLink, binary_payload, close_all, open_all
from ..messages import msgpack_available
from ..procs import ServerProcess, ServerSpec
from . import Context, Row, Scenario, cpu_rows
from .common import paced

PAYLOAD = 640  # 20 ms of 16 kHz 16-bit audio
P99_LIMIT_MS = 50.0


def flavours() -> tuple[str, ...]:
    """The bus serializers to run: json, and msgpack when available."""
    return ("json", "msgpack") if msgpack_available() else ("json",)


def scenario(deflate: bool, levels: Sequence[int]) -> Scenario:
    serializers = flavours()
    who_all = ("baseline", *(f"bus-{s}" for s in serializers))

    async def run_round(ctx: Context) -> dict[str, float]:
        payload = binary_payload(PAYLOAD)
        figures: dict[str, float] = {}

        async def raw_send(link: RawLink, seq: int) -> None:
            await link.send(seq, payload)

        async def bus_send(link: BusLink, seq: int) -> None:
            await link.send_binary(seq, payload)

        echo = await ctx.pool.get(ServerSpec("echo", deflate))
        figures.update(
            await _levels(
                ctx,
                "baseline",
                echo,
                lambda: RawLink(echo.url("/echo"), deflate=deflate),
                raw_send,
                levels,
            )
        )
        for serializer in serializers:
            bus = await ctx.pool.get(ServerSpec("bus", deflate, serializer))

            def bus_link(server: ServerProcess = bus, name: str = serializer) -> BusLink:
                return BusLink(server.url(""), ctx.name(), deflate=deflate, serializer=name)

            result = await _levels(ctx, f"bus-{serializer}", bus, bus_link, bus_send, levels)
            figures.update(result)
        return figures

    rows = tuple(
        Row(
            f"sessions passing ({serializer})",
            "sessions",
            "baseline.max_sessions",
            f"bus-{serializer}.max_sessions",
            "higher",
            digits=0,
        )
        for serializer in serializers
    ) + tuple(
        Row(
            f"p99 at that level ({serializer})",
            "ms",
            "baseline.max_p99_ms",
            f"bus-{serializer}.max_p99_ms",
            "lower",
            digits=2,
        )
        for serializer in serializers
    )
    for serializer in serializers:
        rows += cpu_rows("last_", f"last level ({serializer})", value=f"bus-{serializer}")
    return Scenario(
        name="voice",
        variant=f"deflate={'on' if deflate else 'off'}",
        run_round=run_round,
        rows=rows,
        checks=tuple(
            f"{who}.n_{n}.{what}"
            for who in who_all
            for n in levels
            for what in ("lost", "reordered")
        ),
        expected=("baseline.max_sessions", *(f"bus-{s}.max_sessions" for s in serializers)),
    )


async def _levels(
    ctx: Context,
    who: str,
    server: ServerProcess,
    make: Callable[[], RawLink | BusLink],
    send: Callable[..., Awaitable[None]],
    levels: Sequence[int],
) -> dict[str, float]:
    """Run the levels in turn, adding sessions, until one fails."""
    counts = ctx.counts
    figures: dict[str, float] = {f"{who}.max_sessions": 0, f"{who}.max_p99_ms": float("nan")}
    links: list[RawLink | BusLink] = []
    try:
        for n in levels:
            fresh = [make() for _ in range(n - len(links))]
            await open_all(fresh)
            links.extend(fresh)
            result = await paced(links, counts.voice_seconds, counts.voice_rate, send, server)
            figures.update({f"{who}.n_{n}.{k}": v for k, v in result.items()})
            passed = (
                result["lost"] == 0 and result["reordered"] == 0 and result["p99_ms"] < P99_LIMIT_MS
            )
            figures[f"{who}.n_{n}.passed"] = float(passed)
            figures[f"{who}.last_level"] = n
            for side in ("client", "server"):
                key = f"{side}_cpu_pct"
                if key in result:
                    figures[f"{who}.last_{key}"] = result[key]
            if not passed:
                break
            figures[f"{who}.max_sessions"] = n
            figures[f"{who}.max_p99_ms"] = result["p99_ms"]
    finally:
        await close_all(links)
    if not server.alive():
        raise RuntimeError(f"{server.spec.label} died: {server.errors()}")
    return figures
