"""A user-defined ``BusDataMessage`` dataclass sent from one worker to another and received in
``on_bus_message``: once addressed to "b" (``target`` set) and once broadcast (no target).

"b" records both, in the order sent; "c" records the broadcast. (Who else sees a message
addressed to "b" is not recorded.)
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from fastapi_busproxy import BaseWorker, BusDataMessage, WorkerRunner


@dataclass
class Temperature(BusDataMessage):
    celsius: float
    place: str = "kitchen"


class Sensor(BaseWorker):
    def __init__(self):
        super().__init__("a")
        self.ready: set = set()

    async def on_activated(self, args):
        await super().on_activated(args)
        await self.watch_workers("b", "c")

    async def on_worker_ready(self, data):
        await super().on_worker_ready(data)
        self.ready.add(data.worker_name)
        if self.ready == {"b", "c"}:
            await self.send_bus_message(Temperature(source=self.name, target="b", celsius=21.5))
            await self.send_bus_message(Temperature(source=self.name, celsius=19.0, place="hall"))


class Display(BaseWorker):
    def __init__(self, name: str, expected: int):
        super().__init__(name)
        self.received: list = []
        self.expected = expected
        self.done = asyncio.Event()

    async def on_bus_message(self, message):
        await super().on_bus_message(message)
        if isinstance(message, Temperature) and (self.name == "b" or message.target is None):
            self.received.append(
                {
                    "type": type(message).__name__,
                    "is_bus_data_message": isinstance(message, BusDataMessage),
                    "source": message.source,
                    "target": message.target,
                    "celsius": message.celsius,
                    "place": message.place,
                }
            )
            if len(self.received) == self.expected:
                self.done.set()


async def main() -> dict:
    b, c = Display("b", expected=2), Display("c", expected=1)
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(Sensor(), b, c)

    async def finish():
        await b.done.wait()
        await c.done.wait()
        await runner.end()

    finishing = asyncio.create_task(finish())
    await asyncio.wait_for(runner.run(), 10)
    await finishing
    return {"b": b.received, "c": c.received}
