"""Jobs requested right after ``add_workers``, before ``runner.run()`` has started.

A task created before ``run()`` asks the server for two jobs (one with a timeout, which also
covers the wait for the server to be ready). Both wait until the server is ready, then
complete.
"""

from __future__ import annotations

import asyncio

from fastapi_busproxy import BaseWorker, JobParams, WorkerRunner


class Server(BaseWorker):
    async def on_job_request(self, message):
        await super().on_job_request(message)
        await self.send_job_response(message.job_id, {"x": message.payload["x"], "ok": True})


async def main() -> dict:
    outcome: dict = {}
    runner = WorkerRunner(handle_sigint=False)
    client = BaseWorker("client")
    await runner.add_workers(Server("server"), client)
    outcome["server_registered_before_run"] = "server" in runner.registry

    async def ask(x: int, timeout: float | None) -> dict:
        async with client.job("server", params=JobParams(payload={"x": x}, timeout=timeout)) as j:
            pass
        return j.response

    async def early():
        answers = await asyncio.gather(ask(1, None), ask(2, 1.0))
        outcome["answers"] = list(answers)
        outcome["server_registered_when_answered"] = "server" in runner.registry
        await runner.end()

    asking = asyncio.create_task(early())  # before run()
    await asyncio.wait_for(runner.run(), 10)
    await asking
    outcome["run_returned"] = True
    return outcome
