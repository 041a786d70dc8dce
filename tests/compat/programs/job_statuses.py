"""What the requester sees for each status a server can answer with, with and without a response.

For every status and for both a response dict and no response at all, the client runs one
``async with self.job(...)`` and records whether it raised (and what), ``.response``, and which
of its hooks fired for that job: ``on_job_response``, ``on_job_error``, ``on_job_completed``.
"""

from __future__ import annotations

import asyncio

from fastapi_busproxy import (
    BaseWorker,
    JobError,
    JobGroupError,
    JobParams,
    JobStatus,
    WorkerRunner,
)

STATUSES = [JobStatus.COMPLETED, JobStatus.CANCELLED, JobStatus.FAILED, JobStatus.ERROR]


def public_name(exc: BaseException) -> str:
    """The exception as pipecat's public names see it (ours may raise a subclass)."""
    if isinstance(exc, JobGroupError):
        return "JobGroupError"
    if isinstance(exc, JobError):
        return "JobError"
    return type(exc).__name__


class Server(BaseWorker):
    def __init__(self, outcome: dict):
        super().__init__("server")
        self.outcome = outcome

    async def on_job_request(self, message):
        await super().on_job_request(message)
        status = JobStatus(message.payload["status"])
        response = {"said": message.payload["status"]} if message.payload["with_response"] else None
        await self.send_job_response(message.job_id, response, status=status)

    async def on_job_cancelled(self, message):
        await super().on_job_cancelled(message)
        self.outcome["server_on_job_cancelled"] += 1


class Client(BaseWorker):
    def __init__(self, outcome: dict):
        super().__init__("client")
        self.outcome = outcome
        self.hooks: dict = {}

    def saw(self, job_id: str, hook: str, detail):
        self.hooks.setdefault(job_id, []).append([hook, detail])

    async def on_activated(self, args):
        await super().on_activated(args)
        self.create_task(self.try_every_status(), "try_every_status")

    async def on_job_response(self, message):
        await super().on_job_response(message)
        self.saw(message.job_id, "on_job_response", [message.status, message.response])

    async def on_job_error(self, message):
        await super().on_job_error(message)
        self.saw(message.job_id, "on_job_error", [message.status, message.response])

    async def on_job_completed(self, result):
        await super().on_job_completed(result)
        self.saw(result.job_id, "on_job_completed", result.responses)

    async def one_job(self, status: str, with_response: bool) -> dict:
        seen: dict = {"raised": None}
        payload = {"status": status, "with_response": with_response}
        try:
            async with self.job("server", params=JobParams(payload=payload)) as j:
                pass
        except Exception as exc:
            seen["raised"] = public_name(exc)
        seen["response"] = j.response
        seen["hooks"] = self.hooks.pop(j.job_id, [])
        return seen

    async def try_every_status(self):
        for status in STATUSES:
            for with_response in (True, False):
                key = f"{status.value}_{'with' if with_response else 'without'}_response"
                self.outcome[key] = await self.one_job(status.value, with_response)
        await self.end()


async def main() -> dict:
    outcome: dict = {"server_on_job_cancelled": 0}
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(Server(outcome), Client(outcome))
    await asyncio.wait_for(runner.run(), 10)
    return outcome
