"""The registry and its watches.

``runner.registry.watch(name, handler)`` fires once when the worker registers, at once if it
already has, and watching again with the same handler does nothing. A worker watches others
with ``watch_workers`` (its ``on_worker_ready`` hook fires) or ``@worker_ready(name=...)`` (the
decorated method fires, then ``on_worker_ready``). Also ``local_workers``, ``in`` and ``get``.
"""

from __future__ import annotations

import asyncio

from fastapi_busproxy import BaseWorker, WorkerReadyData, WorkerRunner, worker_ready


class Observer(BaseWorker):
    def __init__(self, seen: dict):
        super().__init__("observer")
        self.seen = seen
        self.saw_a_and_b = asyncio.Event()

    async def on_activated(self, args):
        await super().on_activated(args)
        await self.watch_workers("a")
        await self.watch_workers("a")  # watching twice: still one notification

    @worker_ready(name="b")
    async def on_b_ready(self, data):
        self.seen.setdefault(data.worker_name, []).append("@worker_ready")

    async def on_worker_ready(self, data):
        await super().on_worker_ready(data)
        self.seen.setdefault(data.worker_name, []).append("on_worker_ready")
        if "a" in self.seen and "b" in self.seen:
            self.saw_a_and_b.set()


def snapshot(registry) -> dict:
    a = registry.get("a")
    return {
        "local_workers": sorted(registry.local_workers),
        "a_in_registry": "a" in registry,
        "nobody_in_registry": "nobody" in registry,
        "get_nobody": registry.get("nobody"),
        "get_a": None if a is None else [type(a).__name__, a.worker_name],
    }


async def main() -> dict:
    outcome: dict = {}
    calls: list = []
    runner = WorkerRunner(handle_sigint=False)

    async def early(data):
        calls.append(["early", data.worker_name, isinstance(data, WorkerReadyData)])

    async def late(data):
        calls.append(["late", data.worker_name, data.runner == runner.name])

    await runner.registry.watch("a", early)
    outcome["early_watch_fired_at_once"] = bool(calls)
    outcome["before_add_workers"] = snapshot(runner.registry)

    observer_saw: dict = {}
    observer = Observer(observer_saw)
    await runner.add_workers(BaseWorker("a"), BaseWorker("b"), BaseWorker("c"), observer)
    outcome["after_add_workers"] = snapshot(runner.registry)

    async def after_ready():
        everyone = asyncio.Event()

        async def count(data):
            if len(runner.registry.local_workers) == 4:
                everyone.set()

        for name in ("a", "b", "c", "observer"):
            await runner.registry.watch(name, count)
        await everyone.wait()
        outcome["running"] = snapshot(runner.registry)
        await runner.registry.watch("a", late)
        outcome["late_watch_fired_at_once"] = calls[-1][0] == "late"
        await runner.registry.watch("a", late)  # same handler again: no call
        await runner.registry.watch("a", early)  # likewise
        await observer.saw_a_and_b.wait()
        await runner.end()

    @runner.event_handler("on_ready")
    async def on_ready(runner):
        observer.create_task(after_ready(), "after_ready")

    await asyncio.wait_for(runner.run(), 10)
    outcome["watch_calls"] = calls
    outcome["observer_saw"] = observer_saw
    return outcome
