"""Ending a session: a worker's ``end()``/``cancel()``, or the runner's, stops every worker and
``runner.run()`` returns.

Four sessions, one per way. Each worker logs its ``start``/``stop`` overrides and its
``on_activated`` hook (per worker: the order between workers is not fixed). "idle" is created
inactive. The runner's ``on_ready`` records which workers had started by then.
"""

from __future__ import annotations

import asyncio

from fastapi_busproxy import BaseWorker, WorkerRunner


class Tracked(BaseWorker):
    def __init__(self, name: str, logs: dict, *, active: bool = True):
        super().__init__(name, active=active)
        self.log = logs.setdefault(name, [])
        self.started = asyncio.Event()

    async def start(self):
        self.log.append("start")
        await super().start()
        self.log.append("start returned")
        self.started.set()

    async def stop(self):
        if "stop" not in self.log:  # pipecat may call stop() more than once
            self.log.append("stop")
        await super().stop()

    async def on_activated(self, args):
        await super().on_activated(args)
        self.log.append("on_activated")


async def session(how: str) -> dict:
    logs: dict = {}
    workers = [Tracked("a", logs), Tracked("b", logs), Tracked("idle", logs, active=False)]
    runner = WorkerRunner(handle_sigint=False)
    seen: dict = {}
    ready = asyncio.Event()

    @runner.event_handler("on_ready")
    async def on_ready(runner):
        seen["started_at_on_ready"] = sorted(w.name for w in workers if w.started.is_set())
        ready.set()

    async def finish():
        await ready.wait()
        for w in workers:
            await w.started.wait()
        if how == "worker.end":
            await workers[0].end(reason="done")
        elif how == "worker.cancel":
            await workers[0].cancel(reason="abort")
        elif how == "runner.end":
            await runner.end(reason="done")
        else:
            await runner.cancel(reason="abort")

    await runner.add_workers(*workers)
    finishing = asyncio.create_task(finish())
    await asyncio.wait_for(runner.run(), 10)
    await finishing
    seen["run_returned"] = True
    seen["logs"] = logs
    return seen


async def main() -> dict:
    ways = ("worker.end", "worker.cancel", "runner.end", "runner.cancel")
    return {how: await session(how) for how in ways}
