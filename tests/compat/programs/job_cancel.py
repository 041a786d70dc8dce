"""Cancelling a job from the requester's side, two ways.

1. "leave": the client leaves the ``async with`` block with an exception once the job has
   started; the exception propagates as is, and the job is cancelled.
2. "cancel": the client calls ``cancel_job_group(j.job_id)`` inside the block and then leaves
   it normally; leaving raises ``JobError``.

Either way the server's handler is cancelled, its ``on_job_cancelled`` runs, and the client's
``on_job_response`` sees the "cancelled" answer the server sends on its own.
"""

from __future__ import annotations

import asyncio

from fastapi_busproxy import BaseWorker, JobError, JobGroupError, JobParams, WorkerRunner


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
        self.job_names: dict = {}

    async def on_job_request(self, message):
        await super().on_job_request(message)
        self.job_names[message.job_id] = message.job_name
        await self.send_job_update(message.job_id, {"started": True})
        try:
            await asyncio.Event().wait()  # until cancelled
        except asyncio.CancelledError:
            self.outcome[message.job_name]["server"].append("handler cancelled")
            raise

    async def on_job_cancelled(self, message):
        await super().on_job_cancelled(message)
        name = self.job_names[message.job_id]
        self.outcome[name]["server"].append(["on_job_cancelled", message.source])


class Client(BaseWorker):
    def __init__(self, outcome: dict):
        super().__init__("client")
        self.outcome = outcome
        self.answered = asyncio.Event()
        self.last_answer: list = []

    async def on_activated(self, args):
        await super().on_activated(args)
        self.create_task(self.run_jobs(), "run_jobs")

    async def on_job_response(self, message):
        await super().on_job_response(message)
        self.last_answer = [message.source, message.status, message.response]
        self.answered.set()

    async def one_job(self, name: str) -> None:
        seen = self.outcome[name]
        try:
            async with self.job("server", params=JobParams(name=name)) as j:
                async for event in j:
                    seen["events"].append([event.type, event.data])
                    break  # the job has started
                if name == "leave":
                    raise ValueError("changed my mind")
                await self.cancel_job_group(j.job_id, reason="no longer needed")
                seen["after_cancel_job_group"] = "still inside the block"
        except Exception as exc:
            seen["raised"] = public_name(exc)
        seen["response"] = j.response
        await self.answered.wait()
        self.answered.clear()
        seen["on_job_response"] = self.last_answer

    async def run_jobs(self):
        for name in ("leave", "cancel"):
            self.outcome[name] = {"events": [], "server": []}
            await self.one_job(name)
        await self.end()


async def main() -> dict:
    outcome: dict = {}
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(Server(outcome), Client(outcome))
    await asyncio.wait_for(runner.run(), 10)
    return outcome
