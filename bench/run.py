"""Run the benchmarks: ``python -m bench`` (or ``python bench/run.py``); see ``--help``."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

if sys.version_info < (3, 11):  # asyncio.TaskGroup, asyncio.timeout, asyncio.Runner
    raise SystemExit("the benchmarks need Python 3.11 or newer (the library itself runs on 3.10)")

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import report
from bench.procs import ServerPool, ServerSpec
from bench.scenarios import (
    Context,
    Counts,
    Scenario,
    cut,
    flood,
    imports,
    latency,
    links,
    observe,
    redis,
    throughput,
    voice,
)

NAMES = ("import", "latency", "throughput", "links", "voice", "flood", "cut", "observe", "redis")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmarks of fastapi-busproxy against plain FastAPI/websockets, measured"
        " in the same run on the same stack.",
    )
    parser.add_argument("--quick", action="store_true", help="small counts, 1 round (seconds)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per scenario (3)")
    parser.add_argument(
        "--deflate",
        choices=("off", "on", "both"),
        default="both",
        help="per-message-deflate for latency/throughput (default both); links and voice"
        " use off unless this is on",
    )
    parser.add_argument(
        "--only", default="", help=f"comma-separated scenarios to run, of: {', '.join(NAMES)}"
    )
    parser.add_argument("--json", type=Path, default=None, help="write every figure to this file")
    parser.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="the client's event loop (auto: uvloop when installed, as uvicorn does)",
    )
    parser.add_argument("--timeout", type=float, default=None, help="seconds per round, at most")
    args = parser.parse_args(argv)
    only = {name.strip() for name in args.only.split(",") if name.strip()}
    unknown = only - set(NAMES)
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(sorted(unknown))}; choose from {NAMES}")
    args.only = only or set(NAMES)
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def build(args: argparse.Namespace, counts: Counts) -> list[Scenario]:
    roundtrip = {"off": (False,), "on": (True,), "both": (False, True)}[args.deflate]
    load = args.deflate == "on"
    chosen: list[Scenario] = []
    if "import" in args.only:
        chosen.append(imports.scenario())
    if "latency" in args.only:
        chosen.extend(latency.scenario(d) for d in roundtrip)
    if "throughput" in args.only:
        chosen.extend(throughput.scenario(d) for d in roundtrip)
    if "links" in args.only:
        chosen.append(links.scenario(load, counts.links))
    if "voice" in args.only:
        chosen.append(voice.scenario(load, counts.voice_levels))
    if "flood" in args.only:
        chosen.append(flood.scenario())
    if "cut" in args.only:
        chosen.append(cut.scenario(counts.cut_messages, counts.cut_every, counts.throughput))
    if "observe" in args.only:
        if observe.available():
            chosen.append(observe.scenario())
        else:
            print("observe: skipped (needs opentelemetry-sdk: pip install -e '.[dev]')")
    if "redis" in args.only:
        if redis.available():
            chosen.append(redis.scenario())
        else:
            print("redis: skipped (needs redis-server and the redis extra)")
    return chosen


def servers_needed(args: argparse.Namespace) -> list[ServerSpec]:
    """The shared servers the chosen scenarios use, to start them all at once."""
    roundtrip = {"off": (False,), "on": (True,), "both": (False, True)}[args.deflate]
    load = args.deflate == "on"
    specs: list[ServerSpec] = []
    if args.only & {"latency", "throughput"}:
        specs += [ServerSpec(kind, d) for d in roundtrip for kind in ("echo", "bus")]
    if "cut" in args.only:
        specs += [ServerSpec("bus", False)]
    if "observe" in args.only and observe.available():
        specs += [ServerSpec(kind) for kind in observe.KINDS]
    if "voice" in args.only:
        specs += [ServerSpec("echo", load)]
        specs += [ServerSpec("bus", load, serializer) for serializer in voice.flavours()]
    return list(dict.fromkeys(specs))


async def run_scenario(scenario: Scenario, ctx: Context, rounds: int) -> dict[str, Any]:
    """Run the rounds, each under the hard timeout; a failure ends the scenario, not the run."""
    record: dict[str, Any] = {"status": "ok", "errors": [], "rounds": []}
    started = time.perf_counter()
    limit = ctx.counts.timeout
    for number in range(1, rounds + 1):
        deadline = asyncio.timeout(limit)
        try:
            async with deadline:
                figures = await scenario.run_round(ctx)
        except TimeoutError:
            if deadline.expired():
                record["status"] = "timeout"
                record["errors"].append(f"round {number} did not finish in {limit:g}s")
            else:
                record["status"] = "error"
                record["errors"].append(f"round {number}: a wait timed out")
            break
        except Exception as exc:
            record["status"] = "error"
            record["errors"].append(f"round {number}: {type(exc).__name__}: {exc}")
            break
        record["rounds"].append(figures)
    record["elapsed_s"] = time.perf_counter() - started
    report.summarize(scenario, record)
    return record


async def run(args: argparse.Namespace) -> dict[str, Any]:
    counts = Counts.quick() if args.quick else Counts.full()
    if args.timeout is not None:
        counts = Counts(**{**counts.__dict__, "timeout": args.timeout})
    info = report.machine()
    settings = {
        "mode": "quick" if args.quick else "full",
        "rounds": args.rounds,
        "loop": _loop_name(args.loop),
        "deflate_roundtrip": {"off": "off", "on": "on", "both": "off and on"}[args.deflate],
        "deflate_load": "on" if args.deflate == "on" else "off",
        "scenarios": [name for name in NAMES if name in args.only],
        "counts": counts.__dict__,
    }
    print(report.header(info, settings), flush=True)
    pool = ServerPool()
    ctx = Context(counts=counts, pool=pool)
    results: dict[str, Any] = {}
    started = time.perf_counter()
    try:
        for scenario in build(args, counts):
            if scenario.name != "import" and not pool.running():
                # Started together, once: the import timings above ran on a quiet machine.
                await pool.prestart(servers_needed(args))
            print(f"... {scenario.key}", file=sys.stderr, flush=True)
            results[scenario.key] = await run_scenario(scenario, ctx, args.rounds)
        settings["server_rss"] = {s.spec.label: s.rss() for s in pool.running()}
    finally:
        await pool.close()
    settings["elapsed_s"] = time.perf_counter() - started
    print()
    print(report.table(results))
    print()
    print(report.verdicts(results))
    if settings.get("server_rss"):
        rss = ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in settings["server_rss"].items())
        print(f"server RSS at the end: {rss}")
    print(f"total time: {settings['elapsed_s']:.1f}s")
    return {"machine": info, "settings": settings, "scenarios": results}


def _loop_name(choice: str) -> str:
    return "uvloop" if _loop_factory(choice) is not None else "asyncio"


def _loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise SystemExit("--loop uvloop: uvloop is not installed") from None
        return None
    return uvloop.new_event_loop  # type: ignore[no-any-return]


def _run_loop(coro: Coroutine[Any, Any, dict[str, Any]], choice: str) -> dict[str, Any]:
    with asyncio.Runner(loop_factory=_loop_factory(choice)) as runner:
        return runner.run(coro)


def _finite(value: Any) -> Any:
    """JSON has no NaN: write null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    """Exit status 0 when every scenario ran and nothing was lost or reordered."""
    args = parse_args(argv)
    results = _run_loop(run(args), args.loop)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(_finite(results), indent=2, sort_keys=False) + "\n")
        print(f"figures written to {args.json}")
    ok = all(record["checks"]["ok"] for record in results["scenarios"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
