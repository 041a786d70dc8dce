"""The benchmark suite in its quick mode: it runs, and what it measures arrives intact.

Correctness only: every scenario produced its figures, and no reply was lost or came back out
of order. Timings and ratios depend on the machine and are never asserted here.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    sys.version_info < (3, 11), reason="the benchmarks need Python 3.11"
)

ROOT = Path(__file__).resolve().parent.parent

SCENARIOS = {
    "import",
    "latency[deflate=off]",
    "latency[deflate=on]",
    "throughput[deflate=off]",
    "throughput[deflate=on]",
    "links[deflate=off]",
    "voice[deflate=off]",
    "flood[deflate=off]",
    "cut[every=100]",
    "observe[deflate=off]",
    "redis",
}


@pytest.fixture(scope="module")
def quick_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], dict]:
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result, json.loads(out.read_text())


@pytest.mark.uvicorn
@pytest.mark.timeout(150)  # the quick run itself, started by the fixture, takes up to 110 s
def test_every_scenario_ran_and_produced_its_figures(quick_run) -> None:
    _, data = quick_run
    assert set(data) == {"machine", "settings", "scenarios"}
    assert set(data["scenarios"]) == SCENARIOS
    for key, record in data["scenarios"].items():
        assert record["status"] == "ok", (key, record["errors"])
        assert len(record["rounds"]) == 1, key
        assert record["checks"]["missing"] == [], key
        assert record["rows"], key
        assert record["expected"], key
        for metric in record["expected"]:
            figure = record["summary"][metric]["median"]
            assert figure is not None, (key, metric)
            assert math.isfinite(figure), (key, metric)


@pytest.mark.uvicorn
def test_nothing_was_lost_or_reordered(quick_run) -> None:
    _, data = quick_run
    for key, record in data["scenarios"].items():
        checks = record["checks"]
        assert checks["ok"], key
        assert checks["lost"] == 0, (key, checks["totals"])
        assert checks["reordered"] == 0, (key, checks["totals"])
    throughput = data["scenarios"]["throughput[deflate=off]"]["rounds"][0]
    sent = data["settings"]["counts"]["throughput"]
    assert throughput["baseline.messages"] == throughput["bus.messages"] == sent
    cut = data["scenarios"]["cut[every=100]"]["rounds"][0]
    counts = data["settings"]["counts"]
    assert cut["resume.cuts"] == counts["cut_messages"] // counts["cut_every"] - 1
    assert cut["resume.resumes"] >= 1
    for direction in ("c2s", "s2c"):
        assert cut[f"resume.{direction}_lost"] == 0
        assert cut[f"resume.{direction}_duplicated"] == 0
    links = data["scenarios"]["links[deflate=off]"]["rounds"][0]
    for n in data["settings"]["counts"]["links"]:
        for who in ("baseline", "bus"):
            assert links[f"{who}.links_{n}.lost"] == 0
            assert links[f"{who}.links_{n}.messages"] >= n


@pytest.mark.uvicorn
def test_the_table_and_the_machine_are_reported(quick_run) -> None:
    result, data = quick_run
    assert data["machine"]["cpu_count"] >= 1
    assert set(data["machine"]["versions"]) >= {"uvicorn", "websockets", "fastapi", "orjson"}
    for line in ("machine:", "versions:", "per-message-deflate:", "correctness:", "targets:"):
        assert line in result.stdout
    for key in SCENARIOS:
        assert key in result.stdout


def test_the_script_form_starts() -> None:
    result = subprocess.run(
        [sys.executable, "bench/run.py", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "--quick" in result.stdout
