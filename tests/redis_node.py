"""A node for the cross-process tests: ``python -m tests.redis_node --url ... --worker NAME``.

Runs a WorkerRunner on a RedisBus with one worker, prints ``READY <pid>`` and runs until
SIGTERM (a graceful stop) or SIGKILL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from typing import Any

from fastapi_busproxy import BaseWorker, BusJobRequestMessage, BusMessage, WorkerRunner
from fastapi_busproxy.redis import RedisBus
from tests.redis_messages import Ping


class NodeWorker(BaseWorker):
    """Counts Pings; serves jobs: "stats" reports counters, anything else is echoed."""

    def __init__(self, name: str, bus: RedisBus) -> None:
        super().__init__(name)
        self.redis_bus = bus
        self.pings: list[int] = []

    async def on_bus_message(self, message: BusMessage) -> None:
        if isinstance(message, Ping):
            self.pings.append(message.n)
        else:
            await super().on_bus_message(message)

    async def on_job_request(self, message: BusJobRequestMessage) -> dict[str, Any] | None:
        if message.job_name == "stats":
            return {
                "pings": self.pings,
                "received": self.redis_bus.stats.received,
                "pid": os.getpid(),
            }
        return {"worker": self.name, "pid": os.getpid(), "payload": message.payload}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--worker", required=True)
    parser.add_argument("--prefix", default="busproxy")
    parser.add_argument("--heartbeat-interval", type=float, default=0.2)
    parser.add_argument("--heartbeat-ttl", type=float, default=0.8)
    args = parser.parse_args()
    bus = RedisBus(
        args.url,
        prefix=args.prefix,
        heartbeat_interval=args.heartbeat_interval,
        heartbeat_ttl=args.heartbeat_ttl,
        publish_timeout=2.0,
    )
    runner = WorkerRunner(name=f"node-{args.worker}", bus=bus)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with runner:
        await runner.add_workers(NodeWorker(args.worker, bus))
        print("READY", os.getpid(), flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
