"""The machine, the summary of each scenario, and the table printed at the end of a run."""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
from importlib import metadata
from typing import Any

from .procs import REPO
from .scenarios import Row, Scenario
from .stats import summary

PACKAGES = ("uvicorn", "websockets", "fastapi", "starlette", "orjson", "msgpack", "uvloop")


def machine() -> dict[str, Any]:
    """Where the figures come from."""
    versions = {}
    for name in (*PACKAGES, "fastapi-busproxy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu_count": os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "versions": versions,
        "git": _git_revision(),
        "executable": sys.executable,
    }


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=5, check=True
    ).stdout.strip()


def _git_revision() -> str | None:
    try:
        head = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}{' (modified)' if dirty else ''}"


def summarize(scenario: Scenario, record: dict[str, Any]) -> None:
    """Add ``summary`` (per metric), ``rows`` (ratios, verdicts) and ``checks`` to ``record``."""
    rounds: list[dict[str, float]] = record["rounds"]
    metrics = sorted({key for figures in rounds for key in figures})
    record["summary"] = {m: summary([r[m] for r in rounds if m in r]) for m in metrics}
    record["rows"] = [_row(row, rounds) for row in scenario.rows]
    totals = {key: sum(r.get(key, 0) for r in rounds) for key in scenario.checks}
    missing = [key for key in scenario.expected if not any(key in r for r in rounds)]
    record["expected"] = list(scenario.expected)
    record["checks"] = {
        "totals": totals,
        "lost": sum(v for k, v in totals.items() if k.endswith(".lost")),
        "reordered": sum(v for k, v in totals.items() if k.endswith(".reordered")),
        "missing": missing,
    }
    record["checks"]["ok"] = (
        record["checks"]["lost"] == 0
        and record["checks"]["reordered"] == 0
        and not missing
        and record["status"] == "ok"
    )


def _row(row: Row, rounds: list[dict[str, float]]) -> dict[str, Any]:
    refs = [r.get(row.ref, math.nan) for r in rounds]
    values = [r.get(row.value, math.nan) for r in rounds]
    ratios = [
        v / f if f and math.isfinite(f) and math.isfinite(v) else math.nan
        for f, v in zip(refs, values, strict=True)
    ]
    ratio = summary(ratios)
    verdict = None
    if row.target is not None and ratio["n"]:
        median = ratio["median"]
        ok = median <= row.target if row.better == "lower" else median >= row.target
        verdict = "PASS" if ok else "MISS"
    return {
        "label": row.label,
        "unit": row.unit,
        "ref_name": row.ref_name,
        "value_name": row.value_name,
        "ref": summary(refs),
        "value": summary(values),
        "ratio": ratio,
        "better": row.better,
        "target": row.target,
        "verdict": verdict,
        "show_ratio": row.show_ratio,
        "digits": row.digits,
    }


def _num(value: float, digits: int) -> str:
    if not math.isfinite(value):
        return "-"
    return f"{value:,.{digits}f}"


def _spread(s: dict[str, float], digits: int) -> str:
    if not s["n"]:
        return "-"
    if s["n"] == 1 or s["min"] == s["max"]:
        return _num(s["median"], digits)
    return f"{_num(s['median'], digits)} ({_num(s['min'], digits)}-{_num(s['max'], digits)})"


def _target(row: dict[str, Any]) -> str:
    if row["target"] is None:
        return ""
    return f"{'<=' if row['better'] == 'lower' else '>='} {row['target']:g}x"


def header(info: dict[str, Any], settings: dict[str, Any]) -> str:
    versions = info["versions"]
    shown = ", ".join(f"{name} {versions[name]}" for name in PACKAGES if versions.get(name))
    lines = [
        "fastapi-busproxy benchmarks",
        f"machine: {info['cpu_count']} CPUs, {info['python']}, {info['platform']}",
        f"versions: {shown}; fastapi-busproxy {versions.get('fastapi-busproxy')}"
        f" (git {info['git'] or '?'})",
        "servers: uvicorn ws=websockets-sansio, log_level=warning, lifespan on, one OS process"
        " each on 127.0.0.1, uvicorn's default loop; baseline = plain FastAPI WebSocket echo",
        f"client: this process, event loop {settings['loop']}; mode {settings['mode']},"
        f" {settings['rounds']} round(s) per scenario",
        f"per-message-deflate: latency/throughput {settings['deflate_roundtrip']},"
        f" links/voice {settings['deflate_load']} (server and client alike)",
        "figures: median (min-max) over rounds; ratio = bus / baseline per round, then median",
    ]
    return "\n".join(lines)


def table(scenarios: dict[str, dict[str, Any]]) -> str:
    """The report: one block per scenario."""
    out: list[str] = []
    widths = (38, 7, 24, 24, 19, 8, 4)
    titles = ("figure", "unit", "baseline", "bus", "ratio", "target", "")
    line = "  ".join(t.ljust(w) for t, w in zip(titles, widths, strict=True)).rstrip()
    out.append(line)
    out.append("-" * len(line))
    for key, record in scenarios.items():
        status = record["status"]
        took = record.get("elapsed_s", 0.0)
        out.append(f"{key}  [{len(record['rounds'])} round(s), {took:.1f}s]")
        for row in record.get("rows", ()):
            digits = row["digits"]
            ref = _spread(row["ref"], digits)
            value = _spread(row["value"], digits)
            if row["ref_name"] != "baseline":
                ref = f"{row['ref_name']}: {ref}"
            if row["value_name"] != "bus":
                value = f"{row['value_name']}: {value}"
            shown = row["show_ratio"] and row["ratio"]["n"]
            ratio = f"{_spread(row['ratio'], 2)}x" if shown else ""
            cells = (
                f"  {row['label']}",
                row["unit"],
                ref,
                value,
                ratio,
                _target(row),
                row["verdict"] or "",
            )
            out.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
        checks = record.get("checks", {})
        if checks.get("totals") and record["rounds"]:
            verdict = "OK" if checks["lost"] == 0 and checks["reordered"] == 0 else "FAIL"
            out.append(
                f"  correctness: lost {checks['lost']:g}, reordered {checks['reordered']:g}"
                f" (all rounds, baseline and bus)  {verdict}"
            )
        if checks.get("missing"):
            out.append(f"  MISSING figures: {', '.join(checks['missing'])}")
        if status != "ok":
            out.append(f"  {status.upper()}: {'; '.join(record['errors'])}")
    return "\n".join(out)


def verdicts(scenarios: dict[str, dict[str, Any]]) -> str:
    rows = [row for record in scenarios.values() for row in record.get("rows", ())]
    passed = sum(1 for row in rows if row["verdict"] == "PASS")
    missed = [row["label"] for row in rows if row["verdict"] == "MISS"]
    broken = [key for key, record in scenarios.items() if not record["checks"]["ok"]]
    text = f"targets: {passed} PASS, {len(missed)} MISS"
    text += f"; correctness: {'OK' if not broken else 'FAILED in ' + ', '.join(broken)}"
    return text
