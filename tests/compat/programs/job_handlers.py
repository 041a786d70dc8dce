"""``@job(name=...)`` handlers: dispatch by job name, ``sequential=True``, and the fallback to
``on_job_request`` for other names and for unnamed jobs.

"together" jobs only finish if they run at the same time (each waits for all three to
start); "write" jobs are sequential, so they run one at a time, in the order they were sent.
"""

from __future__ import annotations

import asyncio

from fastapi_busproxy import BaseWorker, JobParams, WorkerRunner, job


class Writer(BaseWorker):
    def __init__(self, outcome: dict):
        super().__init__("writer")
        self.outcome = outcome
        self.started_together = 0
        self.all_together = asyncio.Event()
        self.writing = 0

    @job(name="together")
    async def on_together(self, message):
        self.started_together += 1
        if self.started_together == 3:
            self.all_together.set()
        await self.all_together.wait()
        await self.send_job_response(message.job_id, {"handler": "on_together"})

    @job(name="write", sequential=True)
    async def on_write(self, message):
        i = message.payload["i"]
        self.writing += 1
        self.outcome["write_log"].append(["start", i, self.writing])
        for _ in range(5):
            await asyncio.sleep(0)  # let anything else that wants to run, run
        self.outcome["write_log"].append(["end", i])
        self.writing -= 1
        await self.send_job_response(message.job_id, {"handler": "on_write", "i": i})

    async def on_job_request(self, message):
        await super().on_job_request(message)
        await self.send_job_response(
            message.job_id, {"handler": "on_job_request", "job_name": message.job_name}
        )


class Client(BaseWorker):
    def __init__(self, outcome: dict):
        super().__init__("client")
        self.outcome = outcome
        self.writes: list = []
        self.writes_done = asyncio.Event()

    async def on_activated(self, args):
        await super().on_activated(args)
        self.create_task(self.run_jobs(), "run_jobs")

    async def on_job_response(self, message):
        await super().on_job_response(message)
        if message.response.get("handler") == "on_write":
            self.writes.append(message.response["i"])
            if len(self.writes) == 3:
                self.writes_done.set()

    async def ask(self, name: str | None) -> dict:
        async with self.job("writer", params=JobParams(name=name)) as j:
            pass
        return j.response

    async def run_jobs(self):
        together = await asyncio.gather(*(self.ask("together") for _ in range(3)))
        self.outcome["together"] = list(together)
        for i in (1, 2, 3):  # fire and forget, in this order
            await self.request_job("writer", params=JobParams(name="write", payload={"i": i}))
        await self.writes_done.wait()
        self.outcome["writes_answered"] = self.writes
        self.outcome["other_name"] = await self.ask("other")
        self.outcome["no_name"] = await self.ask(None)
        await self.end()


async def main() -> dict:
    outcome: dict = {"write_log": [], "on_job_request_event": []}
    writer = Writer(outcome)

    @writer.event_handler("on_job_request")
    async def on_job_request(worker, message):
        outcome["on_job_request_event"].append(message.job_name)

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(writer, Client(outcome))
    await asyncio.wait_for(runner.run(), 10)
    outcome["on_job_request_event"].sort(key=str)
    return outcome
