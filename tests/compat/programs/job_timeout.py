"""Timeouts: ``JobParams(timeout=...)`` on a server that never answers, a group where one
member never answers, and a job for a worker that never turns up.

The never-answering server is cancelled when the time is up (its ``on_job_cancelled`` runs and
it answers "cancelled" on its own). An ``async for`` over the job ends, and leaving the block
raises. Waiting for a worker that never registers counts against the same timeout, and raises
on entering the block.
"""

from __future__ import annotations

import asyncio

from fastapi_busproxy import (
    BaseWorker,
    JobError,
    JobGroupError,
    JobGroupParams,
    JobParams,
    WorkerRunner,
)


class Silent(BaseWorker):
    def __init__(self, outcome: dict):
        super().__init__("silent")
        self.outcome = outcome

    async def on_job_request(self, message):
        await super().on_job_request(message)
        await asyncio.Event().wait()  # never answers

    async def on_job_cancelled(self, message):
        await super().on_job_cancelled(message)
        self.outcome["silent_on_job_cancelled"] += 1


class Quick(BaseWorker):
    async def on_job_request(self, message):
        await super().on_job_request(message)
        await self.send_job_response(message.job_id, {"quick": True})


def public_name(exc: BaseException) -> str:
    """The exception as pipecat's public names see it (ours may raise a subclass)."""
    if isinstance(exc, JobGroupError):
        return "JobGroupError"
    if isinstance(exc, JobError):
        return "JobError"
    return type(exc).__name__


class Client(BaseWorker):
    def __init__(self, outcome: dict):
        super().__init__("client")
        self.outcome = outcome
        self.cancelled_answers: list = []
        self.two_cancelled = asyncio.Event()

    async def on_activated(self, args):
        await super().on_activated(args)
        self.create_task(self.run_jobs(), "run_jobs")

    async def on_job_response(self, message):
        await super().on_job_response(message)
        if message.status == "cancelled":
            self.cancelled_answers.append(message.source)
            if len(self.cancelled_answers) == 2:
                self.two_cancelled.set()

    async def single(self) -> dict:
        seen: dict = {"stages": []}
        try:
            async with self.job("silent", params=JobParams(timeout=0.3)) as j:
                seen["stages"].append("entered")
                async for event in j:
                    seen["stages"].append(["event", event.type])
                seen["stages"].append("async for ended")
        except Exception as exc:
            seen["raised"] = public_name(exc)
        seen["response"] = j.response
        return seen

    async def group(self) -> dict:
        seen: dict = {}
        try:
            async with self.job_group("quick", "silent", params=JobGroupParams(timeout=1.0)) as g:
                pass
        except Exception as exc:
            seen["raised"] = public_name(exc)
        seen["responses"] = g.responses
        return seen

    async def absent(self, make_context) -> dict:
        seen: dict = {"entered": False}
        try:
            async with make_context():
                seen["entered"] = True
        except Exception as exc:
            seen["raised"] = public_name(exc)
        return seen

    async def run_jobs(self):
        self.outcome["single"] = await self.single()
        self.outcome["group"] = await self.group()
        await self.two_cancelled.wait()
        self.outcome["cancelled_answers_from"] = self.cancelled_answers
        self.outcome["absent_single"] = await self.absent(
            lambda: self.job("nobody", params=JobParams(timeout=0.2))
        )
        self.outcome["absent_group"] = await self.absent(
            lambda: self.job_group("quick", "nobody", params=JobGroupParams(timeout=0.2))
        )
        await self.end()


async def main() -> dict:
    outcome: dict = {"silent_on_job_cancelled": 0}
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(Silent(outcome), Quick("quick"), Client(outcome))
    await asyncio.wait_for(runner.run(), 10)
    return outcome
