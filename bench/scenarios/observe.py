"""What seeing the bus costs: latency and pipelined throughput of the bus with the metrics and
the status page mounted, and with tracing on (every span sampled, on both sides), each against
the plain bus measured in the same round."""

from __future__ import annotations

from ..clients import BusLink, close_all, text_payload
from ..procs import ServerSpec
from . import Context, Row, Scenario
from .common import bus_ping_pong, pipeline
from .latency import PAYLOAD

KINDS = ("bus", "bus-metrics", "bus-traced")


def available() -> bool:
    """Tracing's cost needs the OpenTelemetry SDK (the dev extra)."""
    try:
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError:
        return False
    return True


def scenario() -> Scenario:
    async def run_round(ctx: Context) -> dict[str, float]:
        from fastapi_busproxy import tracing

        from ..server import discarding_tracer_provider

        counts = ctx.counts
        data = text_payload(PAYLOAD)
        figures: dict[str, float] = {}

        async def send(link: BusLink, seq: int) -> None:
            await link.send_text(seq, data)

        for kind in KINDS:
            server = await ctx.pool.get(ServerSpec(kind))
            key = kind.replace("-", "_")
            if kind == "bus-traced":  # the client traces too: the context crosses
                tracing.instrument(tracer_provider=discarding_tracer_provider())
            try:
                link = BusLink(server.url(""), ctx.name(), deflate=False)
                try:
                    await link.open()
                    result = await bus_ping_pong(
                        link, counts.latency, counts.latency_warmup, data, server
                    )
                    figures.update({f"{key}.{k}": v for k, v in result.items()})
                    result = await pipeline([link], counts.throughput, send, server)
                    figures.update({f"{key}.pipe_{k}": v for k, v in result.items()})
                finally:
                    await close_all([link])
            finally:
                tracing.uninstrument()
        return figures

    def rows(key: str, name: str, latency: float, throughput: float) -> tuple[Row, ...]:
        return (
            Row(
                f"p50, {name} vs off",
                "ms",
                "bus.p50_ms",
                f"{key}.p50_ms",
                "lower",
                latency,
                ref_name="off",
                value_name=name,
                digits=3,
            ),
            Row(
                f"p99, {name} vs off",
                "ms",
                "bus.p99_ms",
                f"{key}.p99_ms",
                "lower",
                ref_name="off",
                value_name=name,
                digits=3,
            ),
            Row(
                f"pipelined, {name} vs off",
                "msg/s",
                "bus.pipe_msgs_per_s",
                f"{key}.pipe_msgs_per_s",
                "higher",
                throughput,
                ref_name="off",
                value_name=name,
                digits=0,
            ),
        )

    return Scenario(
        name="observe",
        variant="deflate=off",
        run_round=run_round,
        rows=(
            *rows("bus_metrics", "metrics", 1.05, 0.95),
            *rows("bus_traced", "tracing", 1.15, 0.85),
        ),
        checks=tuple(
            f"{kind.replace('-', '_')}.{prefix}{check}"
            for kind in KINDS
            for prefix in ("", "pipe_")
            for check in ("lost", "reordered")
        ),
        expected=("bus.p50_ms", "bus_metrics.p50_ms", "bus_traced.p50_ms"),
    )
