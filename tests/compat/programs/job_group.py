"""A job group fanned out to three workers, iterated with ``async for`` and collected.

"a" and "c" each send an update and answer; "b" streams, and its stream's end is its answer.
The boss records every event per worker (the order within one worker is fixed, the
interleaving between workers is not), the collected ``responses``, and what
``on_job_completed`` was given. Then it sends a second group fire-and-forget with
``request_job_group`` and learns its answers from ``on_job_completed`` alone.
"""

from __future__ import annotations

import asyncio

from fastapi_busproxy import (
    BaseWorker,
    JobGroupEvent,
    JobGroupParams,
    JobGroupResponse,
    WorkerRunner,
)


class Doubler(BaseWorker):
    async def on_job_request(self, message):
        await super().on_job_request(message)
        x = message.payload["x"]
        await self.send_job_update(message.job_id, {"progress": 50})
        await self.send_job_response(message.job_id, {"by": self.name, "y": 2 * x})


class Streamer(BaseWorker):
    async def on_job_request(self, message):
        await super().on_job_request(message)
        await self.send_job_stream_start(message.job_id, {"kind": "digits"})
        for digit in (1, 2):
            await self.send_job_stream_data(message.job_id, {"digit": digit})
        await self.send_job_stream_end(message.job_id, {"by": self.name, "count": 2})


class Boss(BaseWorker):
    def __init__(self, outcome: dict):
        super().__init__("boss")
        self.outcome = outcome
        self.completed: dict = {}
        self.second_done = asyncio.Event()

    async def on_activated(self, args):
        await super().on_activated(args)
        self.create_task(self.fan_out(), "fan_out")

    async def on_job_completed(self, result):
        await super().on_job_completed(result)
        self.completed[result.job_id] = {
            "is_group_response": isinstance(result, JobGroupResponse),
            "responses": result.responses,
        }
        if len(self.completed) == 2:
            self.second_done.set()

    async def fan_out(self):
        events: dict = {"a": [], "b": [], "c": []}
        all_group_events = True
        params = JobGroupParams(name="double", payload={"x": 21})
        async with self.job_group("a", "b", "c", params=params) as g:
            async for ev in g:
                all_group_events = all_group_events and isinstance(ev, JobGroupEvent)
                events[ev.worker_name].append([ev.type, ev.data])
        self.outcome["events"] = events
        self.outcome["all_group_events"] = all_group_events
        self.outcome["responses"] = g.responses
        self.outcome["event_types"] = [
            JobGroupEvent.UPDATE,
            JobGroupEvent.STREAM_START,
            JobGroupEvent.STREAM_DATA,
            JobGroupEvent.STREAM_END,
        ]
        self.outcome["on_job_completed"] = self.completed.get(g.job_id)
        params = JobGroupParams(name="double", payload={"x": 5})
        job_id = await self.request_job_group("a", "c", params=params)
        await self.second_done.wait()
        self.outcome["fire_and_forget_on_job_completed"] = self.completed[job_id]
        await self.end()


async def main() -> dict:
    outcome: dict = {}
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(Doubler("a"), Streamer("b"), Doubler("c"), Boss(outcome))
    await asyncio.wait_for(runner.run(), 10)
    return outcome
