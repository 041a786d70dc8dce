"""A job group where one worker answers with status "error", with and without ``cancel_on_error``.

With ``cancel_on_error=True`` (the default) "a" and "c" hold their job until it is cancelled;
"b" answers "error", which cancels the group: the boss's ``async with`` raises
``JobGroupError``, ``on_job_error`` sees "b"'s answer, ``on_job_completed`` does not fire, and
"a" and "c" see ``on_job_cancelled`` and answer "cancelled" on their own.
With ``cancel_on_error=False`` all three answer and the group completes normally.
"""

from __future__ import annotations

import asyncio

from fastapi_busproxy import (
    BaseWorker,
    JobError,
    JobGroupError,
    JobGroupParams,
    JobStatus,
    WorkerRunner,
)


def public_name(exc: BaseException) -> str:
    """The exception as pipecat's public names see it (ours may raise a subclass)."""
    if isinstance(exc, JobGroupError):
        return "JobGroupError"
    if isinstance(exc, JobError):
        return "JobError"
    return type(exc).__name__


class Member(BaseWorker):
    def __init__(self, name: str, outcome: dict):
        super().__init__(name)
        self.outcome = outcome

    async def on_job_request(self, message):
        await super().on_job_request(message)
        if self.name == "b":
            await self.send_job_response(message.job_id, {"why": "broken"}, status=JobStatus.ERROR)
        elif message.job_name == "hold":
            await asyncio.Event().wait()  # until the job is cancelled
        else:
            await self.send_job_response(message.job_id, {"by": self.name})

    async def on_job_cancelled(self, message):
        await super().on_job_cancelled(message)
        self.outcome["on_job_cancelled"].append(self.name)


class Boss(BaseWorker):
    def __init__(self, outcome: dict):
        super().__init__("boss")
        self.outcome = outcome
        self.responses: list = []
        self.three_answers = asyncio.Event()

    async def on_activated(self, args):
        await super().on_activated(args)
        self.create_task(self.run_groups(), "run_groups")

    async def on_job_response(self, message):
        await super().on_job_response(message)
        self.responses.append([message.source, message.status, message.response])
        if len(self.responses) == 3:
            self.three_answers.set()

    async def on_job_error(self, message):
        await super().on_job_error(message)
        self.outcome["on_job_error"].append([message.source, message.status, message.response])

    async def on_job_completed(self, result):
        await super().on_job_completed(result)
        self.outcome["on_job_completed"].append(result.responses)

    async def run_group(self, name: str, cancel_on_error: bool) -> dict:
        params = JobGroupParams(name=name, cancel_on_error=cancel_on_error)
        result: dict = {"raised": None}
        try:
            async with self.job_group("a", "b", "c", params=params) as g:
                pass
        except Exception as exc:
            result["raised"] = public_name(exc)
        result["responses"] = g.responses
        await self.three_answers.wait()  # every member answers, cancelled ones too
        result["on_job_response"] = sorted(self.responses)
        self.responses = []
        self.three_answers.clear()
        return result

    async def run_groups(self):
        self.outcome["cancel_on_error"] = await self.run_group("hold", True)
        self.outcome["cancelled_members"] = sorted(self.outcome.pop("on_job_cancelled"))
        self.outcome["on_job_cancelled"] = []
        self.outcome["no_cancel_on_error"] = await self.run_group("answer", False)
        await self.end()


async def main() -> dict:
    outcome: dict = {"on_job_error": [], "on_job_completed": [], "on_job_cancelled": []}
    runner = WorkerRunner(handle_sigint=False)
    members = [Member(name, outcome) for name in ("a", "b", "c")]
    await runner.add_workers(*members, Boss(outcome))
    await asyncio.wait_for(runner.run(), 10)
    return outcome
