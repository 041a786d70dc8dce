"""A pipecat-ai 1.14 client: runs two jobs on the remote worker "worker" through a proxy.

Run with the side environment's python (pipecat is never imported by our own code)::

    .pipecat-venv/bin/python tests/interop/pipecat_client.py ws://127.0.0.1:PORT/ws

A ``WorkerRunner`` with a ``WebSocketProxyClient`` (local worker "voice", remote worker
"worker", ``active=True``) and a "voice" worker that, once started, runs a normal job ("echo")
and a streamed job ("stream") with ``self.job(...)``. It prints one JSON line on stdout::

    {"echo": {"events": [[type, data], ...], "response": {...}},
     "stream": {"events": [...], "response": {...}}}

or ``{"error": "..."}``, then ends its runner and exits (0 on success, 1 on error).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from loguru import logger
from pipecat.pipeline.job_context import JobParams
from pipecat.workers.base_worker import BaseWorker
from pipecat.workers.proxy.websocket.client import WebSocketProxyClient
from pipecat.workers.runner import WorkerRunner

LOG_LEVEL = os.environ.get("BUSPROXY_PIPECAT_LOG_LEVEL", "WARNING")
JOB_TIMEOUT = 8.0
RUN_TIMEOUT = 20.0
ECHO_PAYLOAD = {"text": "hello", "n": 1, "nested": {"ok": True, "none": None}, "list": [1, "a"]}


class Voice(BaseWorker):
    """Runs the two jobs once active, prints the results, and ends the runner."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.result: dict[str, Any] = {}

    async def on_activated(self, args: dict | None) -> None:
        await super().on_activated(args)
        self.create_task(self._run_jobs(), "jobs")

    async def _run_job(self, params: JobParams) -> dict[str, Any]:
        events: list[list[Any]] = []
        async with self.job("worker", params=params) as job:
            async for event in job:
                events.append([event.type, event.data])
        return {"events": events, "response": job.response}

    async def _run_jobs(self) -> None:
        try:
            self.result = {
                "echo": await self._run_job(
                    JobParams(name="echo", payload=ECHO_PAYLOAD, timeout=JOB_TIMEOUT)
                ),
                "stream": await self._run_job(JobParams(name="stream", timeout=JOB_TIMEOUT)),
            }
        except Exception as exc:
            self.result = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(self.result), flush=True)
        await self.worker_runner.end(reason="jobs done")


async def run(url: str) -> int:
    runner = WorkerRunner(name="pipecat-client", handle_sigint=False)
    voice = Voice("voice")
    proxy = WebSocketProxyClient(
        "proxy",
        url=url,
        remote_worker_name="worker",
        local_worker_name="voice",
        active=True,
    )
    await runner.add_workers(voice, proxy)
    try:
        await asyncio.wait_for(runner.run(), RUN_TIMEOUT)
    except asyncio.TimeoutError:
        print(json.dumps({"error": f"runner did not end within {RUN_TIMEOUT}s"}), flush=True)
        return 1
    return 0 if voice.result and "error" not in voice.result else 1


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} ws://HOST:PORT/PATH")
    logger.remove()
    logger.add(sys.stderr, level=LOG_LEVEL)
    sys.exit(asyncio.run(run(sys.argv[1])))


if __name__ == "__main__":
    main()
