"""A handoff: "a" activates "b" with arguments and deactivates itself.

"a" is created active, so its ``on_activated`` runs when it starts (with no arguments); "b" and
"c" are created inactive, and ``on_activated`` does not run for them at start. Once "b" is
ready (``@worker_ready``), "a" hands over with ``activate_worker("b", args=...,
deactivate_self=True)``. The outcome records what each hook saw, ``active`` and
``activation_args`` at each step, per worker (the order between workers is not fixed).
"""

from __future__ import annotations

import asyncio

from fastapi_busproxy import BaseWorker, WorkerActivationArgs, WorkerRunner, worker_ready


class Agent(BaseWorker):
    def __init__(self, name: str, logs: dict, *, active: bool):
        super().__init__(name, active=active)
        self.log = logs.setdefault(name, [])
        self.activated = asyncio.Event()
        self.deactivated = asyncio.Event()

    async def on_activated(self, args):
        await super().on_activated(args)
        self.log.append(["on_activated", args, self.active, self.activation_args])
        self.activated.set()

    async def on_deactivated(self):
        await super().on_deactivated()
        self.log.append(["on_deactivated", self.active, self.activation_args])
        self.deactivated.set()


class First(Agent):
    def __init__(self, logs: dict, others: dict):
        super().__init__("a", logs, active=True)
        self.others = others
        self.active_right_after_handing_over = None

    @worker_ready(name="b")
    async def on_b_ready(self, data):
        self.create_task(self.hand_over(), "hand_over")

    async def hand_over(self):
        args = WorkerActivationArgs(metadata={"topic": "billing"})
        await self.activate_worker("b", args=args, deactivate_self=True)
        self.active_right_after_handing_over = self.active  # not in the log: a race with the hook
        await self.others["b"].activated.wait()
        await self.deactivated.wait()
        self.log.append(["both done", self.active, self.others["b"].active])
        self.others["c"].log.append(["still inactive", not self.others["c"].active])
        await self.end()


async def main() -> dict:
    logs: dict = {}
    others: dict = {}
    b, c = Agent("b", logs, active=False), Agent("c", logs, active=False)
    others.update(b=b, c=c)
    a = First(logs, others)
    before = {w.name: [w.active, w.activation_args] for w in (a, b, c)}
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(a, b, c)
    await asyncio.wait_for(runner.run(), 10)
    return {
        "before_run": before,
        "logs": logs,
        "a_active_right_after_handing_over": a.active_right_after_handing_over,
        "args_round_trip": WorkerActivationArgs.from_dict({"metadata": {"k": 1}, "x": 2}).to_dict(),
        "empty_args": WorkerActivationArgs().to_dict(),
    }
