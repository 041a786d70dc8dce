"""The scenarios: each measures the bus and its baseline, one round at a time.

A scenario's round returns a flat ``{metric: value}`` dict; :class:`Row` says which two
metrics the report compares, and which target applies to their ratio.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from ..procs import ServerPool


@dataclass(frozen=True)
class Counts:
    """How much each scenario does: the full run, or ``--quick``."""

    latency: int
    latency_warmup: int
    throughput: int
    links: tuple[int, ...]
    links_total: int  # messages per level, spread over its links (at least links_min each)
    links_min: int
    voice_levels: tuple[int, ...]
    voice_seconds: float
    voice_rate: int
    import_runs: int
    flood_jobs: int  # the polite peer's jobs, with and without a flooder
    cut_messages: int  # messages sent through the relay per client kind
    cut_every: int  # ...and how many between two cuts
    timeout: float  # hard limit of one round of a scenario, in seconds

    @classmethod
    def full(cls) -> Counts:
        return cls(
            latency=5000,
            latency_warmup=200,
            throughput=50_000,
            links=(1, 100, 1000),
            links_total=20_000,
            links_min=200,
            voice_levels=(10, 25, 50, 100, 200, 400),
            voice_seconds=3.0,
            voice_rate=50,
            import_runs=5,
            flood_jobs=300,
            cut_messages=10_000,
            cut_every=100,
            timeout=600.0,
        )

    @classmethod
    def quick(cls) -> Counts:
        return cls(
            latency=300,
            latency_warmup=30,
            throughput=2000,
            links=(1, 20),
            links_total=1000,
            links_min=200,
            voice_levels=(10,),
            voice_seconds=1.0,
            voice_rate=50,
            import_runs=1,
            flood_jobs=30,
            cut_messages=600,
            cut_every=100,
            timeout=60.0,
        )


@dataclass
class Context:
    """What a round needs: the counts, the shared servers, and fresh worker names."""

    counts: Counts
    pool: ServerPool
    _names: itertools.count[int] = field(default_factory=itertools.count)

    def name(self, prefix: str = "voice") -> str:
        """A worker name not used before in this run (``voice-<i>``), so no session collides
        with one still closing on the server."""
        return f"{prefix}-{next(self._names)}"


@dataclass(frozen=True)
class Row:
    """One line of the report: ``value`` compared with ``ref``.

    ``target`` bounds the ratio value/ref: at most ``target`` when lower is better, at least
    ``target`` when higher is better; ``None``: shown for information.
    """

    label: str
    unit: str
    ref: str
    value: str
    better: Literal["lower", "higher"]
    target: float | None = None
    ref_name: str = "baseline"
    value_name: str = "bus"
    digits: int = 2
    show_ratio: bool = True


def cpu_rows(prefix: str, where: str, ref: str = "baseline", value: str = "bus") -> tuple[Row, ...]:
    """Rows of the CPU the client and the server used (``<who>.<prefix>client_cpu_pct``)."""
    return tuple(
        Row(
            f"{side} CPU, {where}",
            "% core",
            f"{ref}.{prefix}{side}_cpu_pct",
            f"{value}.{prefix}{side}_cpu_pct",
            "lower",
            digits=0,
            show_ratio=False,
        )
        for side in ("client", "server")
    )


@dataclass(frozen=True)
class Scenario:
    """A named measurement (``variant`` distinguishes its settings, e.g. ``deflate=off``)."""

    name: str
    variant: str
    run_round: Callable[[Context], Awaitable[dict[str, float]]]
    rows: tuple[Row, ...]
    checks: tuple[str, ...] = ()  # metrics that must be 0 (lost, reordered)
    expected: tuple[str, ...] = ()  # metrics every successful round has

    @property
    def key(self) -> str:
        return f"{self.name}[{self.variant}]" if self.variant else self.name
