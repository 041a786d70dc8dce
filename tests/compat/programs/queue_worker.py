"""A worker with its own ``start()``/``stop()`` that answers jobs from a queue, after
``on_job_request`` has returned.

``start()`` makes a consumer task with ``self.create_task``; ``stop()`` cancels it with
``self.cancel_task``. ``on_job_request`` only enqueues. The client runs three jobs at once and
collects the answers.
pipecat may call ``stop()`` more than once while shutting down (it did three times in 1.14),
so ``stop()`` is written to be repeatable and the outcome records which hooks ran, not how often.
"""

from __future__ import annotations

import asyncio

from fastapi_busproxy import BaseWorker, JobParams, WorkerRunner


class QueueWorker(BaseWorker):
    def __init__(self, name: str, outcome: dict):
        super().__init__(name)
        self.outcome = outcome
        self.queue: asyncio.Queue = asyncio.Queue()
        self.consumer: asyncio.Task | None = None

    async def start(self):
        self.outcome["hooks"].append("start")
        await super().start()
        self.consumer = self.create_task(self.consume(), "consume")

    async def stop(self):
        self.outcome["hooks"].append("stop")
        if self.consumer is not None:
            await self.cancel_task(self.consumer)
            self.outcome["consumer_cancelled"] = self.consumer.cancelled()
            self.consumer = None
        await super().stop()

    async def on_job_request(self, message):
        await super().on_job_request(message)
        self.outcome["enqueued"].append(message.payload["n"])
        await self.queue.put(message)

    async def consume(self):
        while True:
            message = await self.queue.get()
            n = message.payload["n"]
            await self.send_job_response(message.job_id, {"square": n * n})


class Client(BaseWorker):
    def __init__(self, outcome: dict):
        super().__init__("client")
        self.outcome = outcome

    async def on_activated(self, args):
        await super().on_activated(args)
        self.create_task(self.ask(), "ask")

    async def square(self, n: int) -> dict:
        async with self.job("squarer", params=JobParams(payload={"n": n})) as j:
            pass
        return j.response

    async def ask(self):
        self.outcome["answers"] = list(await asyncio.gather(*(self.square(n) for n in (2, 3, 4))))
        await self.end()


async def main() -> dict:
    outcome: dict = {"hooks": [], "enqueued": []}
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(QueueWorker("squarer", outcome), Client(outcome))
    await asyncio.wait_for(runner.run(), 10)
    outcome["enqueued"].sort()
    outcome["hooks"] = list(dict.fromkeys(outcome["hooks"]))  # first calls, in order
    return outcome
