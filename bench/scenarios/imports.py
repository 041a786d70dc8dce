"""Import time of ``fastapi_busproxy`` vs ``fastapi, uvicorn, websockets``, in fresh processes.

Each run is a new interpreter that times the import statement itself with ``perf_counter``
(what ``-X importtime`` totals, without its own overhead); the wall time of the whole
subprocess is kept too. The package's bytecode is compiled first, as installing a wheel does
(an editable install, or ``PYTHONDONTWRITEBYTECODE``, would leave every run compiling our
sources while fastapi's come compiled from site-packages), and one unmeasured run of each warms
the page cache.
"""

from __future__ import annotations

import asyncio
import compileall
import os
import statistics
import sys

from ..clients import now
from ..procs import REPO
from . import Context, Row, Scenario

CODES = {
    "baseline": "import fastapi, uvicorn, websockets",
    "bus": "import fastapi_busproxy",
}
TIMER = "import time\nstarted = time.perf_counter()\n{code}\nprint(time.perf_counter() - started)\n"


async def _one(code: str) -> tuple[float, float]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(REPO), env.get("PYTHONPATH"))))
    started = now()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        TIMER.format(code=code),
        cwd=str(REPO),
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    wall = now() - started
    if process.returncode != 0:
        raise RuntimeError(f"{code!r} failed: {err.decode(errors='replace')[-500:]}")
    return float(out.split()[-1]) * 1000, wall * 1000


async def run_round(ctx: Context) -> dict[str, float]:
    figures: dict[str, float] = {}
    compileall.compile_dir(REPO / "fastapi_busproxy", quiet=1)
    for code in CODES.values():
        await _one(code)  # compiles bytecode, warms the page cache
    samples: dict[str, list[tuple[float, float]]] = {who: [] for who in CODES}
    for _ in range(ctx.counts.import_runs):
        for who, code in CODES.items():  # interleaved, so drift hits both alike
            samples[who].append(await _one(code))
    for who, runs in samples.items():
        figures[f"{who}.import_ms"] = statistics.median(r[0] for r in runs)
        figures[f"{who}.process_ms"] = statistics.median(r[1] for r in runs)
    return figures


def scenario() -> Scenario:
    return Scenario(
        name="import",
        variant="",
        run_round=run_round,
        rows=(
            Row("import statement", "ms", "baseline.import_ms", "bus.import_ms", "lower", 1.1),
            Row("whole python -c process", "ms", "baseline.process_ms", "bus.process_ms", "lower"),
        ),
        expected=("baseline.import_ms", "bus.import_ms"),
    )
