"""A server worker written the way pipecat writes one, and a client that asks it twice.

The server overrides ``on_job_request``, calls ``super()``, and answers with
``send_job_response``. The client starts its work from ``on_activated`` (it is created active,
so that fires when it starts) and ends the session when it is done.
"""

from __future__ import annotations

import asyncio

from fastapi_busproxy import BaseWorker, JobParams, JobStatus, WorkerRunner


class Greeter(BaseWorker):
    async def on_job_request(self, message):
        await super().on_job_request(message)
        name = (message.payload or {}).get("name", "world")
        await self.send_job_response(
            message.job_id,
            {
                "greeting": f"hello {name}",
                "job_name": message.job_name,
                "requester": message.source,
            },
        )


class Client(BaseWorker):
    def __init__(self, outcome: dict):
        super().__init__("client")
        self.outcome = outcome

    async def on_activated(self, args):
        await super().on_activated(args)
        self.create_task(self.talk(), "talk")

    async def on_job_response(self, message):
        await super().on_job_response(message)
        self.outcome["seen_by_on_job_response"].append(
            {
                "source": message.source,
                "target": message.target,
                "status": message.status,
                "completed": message.status == JobStatus.COMPLETED,
                "response": message.response,
            }
        )

    async def talk(self):
        async with self.job(
            "greeter", params=JobParams(name="greet", payload={"name": "ada"})
        ) as j:
            pass
        self.outcome["named_job"] = j.response
        async with self.job("greeter") as j:
            pass
        self.outcome["unnamed_job"] = j.response
        await self.end(reason="done")


async def main() -> dict:
    outcome: dict = {"seen_by_on_job_response": []}
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(Greeter("greeter"), Client(outcome))
    await asyncio.wait_for(runner.run(), 10)
    outcome["run_returned"] = True
    return outcome
