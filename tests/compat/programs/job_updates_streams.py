"""Updates, streams and update requests on single jobs, seen through ``async for`` and the hooks.

"progress": the server sends an update, then waits until the client asks for one with
``request_job_update``; its ``on_job_update_requested`` answers with a second update, and the
job completes. "stream": the server streams; the stream's end ends the job, and the end's data
is the response (a ``send_job_response`` for it afterwards raises ``RuntimeError``).
"bare_stream" ends its stream without data.
"""

from __future__ import annotations

import asyncio

from fastapi_busproxy import BaseWorker, JobEvent, JobParams, WorkerRunner


class Server(BaseWorker):
    def __init__(self, outcome: dict):
        super().__init__("server")
        self.outcome = outcome
        self.asked = asyncio.Event()
        self.ended_stream = ""

    async def on_job_update_requested(self, message):
        await super().on_job_update_requested(message)
        self.outcome["update_requested_by"] = message.source
        await self.send_job_update(message.job_id, {"asked": True})
        self.asked.set()

    async def on_job_request(self, message):
        await super().on_job_request(message)
        job_id = message.job_id
        if message.job_name == "progress":
            await self.send_job_update(job_id, {"pct": 50})
            await self.asked.wait()
            await self.send_job_response(job_id, {"done": True})
        elif message.job_name == "stream":
            await self.send_job_stream_start(job_id, {"format": "text"})
            await self.send_job_stream_data(job_id, {"text": "hel"})
            await self.send_job_stream_data(job_id, {"text": "lo"})
            await self.send_job_stream_end(job_id, {"text": "hello"})
            self.ended_stream = job_id
        elif message.job_name == "bare_stream":
            try:  # the "stream" job was ended by its stream's end
                await self.send_job_response(self.ended_stream, {"too": "late"})
            except RuntimeError:
                self.outcome["respond_after_stream_end_raised_runtime_error"] = True
            await self.send_job_stream_start(job_id)
            await self.send_job_stream_end(job_id)


class Client(BaseWorker):
    def __init__(self, outcome: dict):
        super().__init__("client")
        self.outcome = outcome
        self.hooks: list = []

    async def on_activated(self, args):
        await super().on_activated(args)
        self.create_task(self.run_jobs(), "run_jobs")

    async def on_job_update(self, message):
        await super().on_job_update(message)
        self.hooks.append(["on_job_update", message.update])

    async def on_job_stream_start(self, message):
        await super().on_job_stream_start(message)
        self.hooks.append(["on_job_stream_start", message.data])

    async def on_job_stream_data(self, message):
        await super().on_job_stream_data(message)
        self.hooks.append(["on_job_stream_data", message.data])

    async def on_job_stream_end(self, message):
        await super().on_job_stream_end(message)
        self.hooks.append(["on_job_stream_end", message.data])

    async def on_job_response(self, message):
        await super().on_job_response(message)
        self.hooks.append(["on_job_response", message.status, message.response])

    async def on_job_completed(self, result):
        await super().on_job_completed(result)
        self.hooks.append(["on_job_completed", result.responses])

    async def one_job(self, name: str) -> dict:
        events = []
        async with self.job("server", params=JobParams(name=name)) as j:
            async for event in j:
                events.append([type(event).__name__, event.type, event.data])
                if event.type == JobEvent.UPDATE and event.data == {"pct": 50}:
                    await self.request_job_update(j.job_id, "server")
        seen = {"events": events, "response": j.response, "hooks": self.hooks}
        self.hooks = []
        return seen

    async def run_jobs(self):
        for name in ("progress", "stream", "bare_stream"):
            self.outcome[name] = await self.one_job(name)
        await self.end()


async def main() -> dict:
    outcome: dict = {}
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(Server(outcome), Client(outcome))
    await asyncio.wait_for(runner.run(), 10)
    return outcome
