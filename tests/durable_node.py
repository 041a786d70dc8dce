"""A node for the durable-delivery fault tests: ``python -m tests.durable_node --url ...
--worker NAME [--peer NAME --count N]``.

Runs a WorkerRunner on a RedisBus in durable mode with one worker, prints ``READY <pid>``, then
sends ``count`` numbered Pings to ``peer`` (about 100 a second) and runs until SIGTERM. It
prints a line as each thing happens, flushed, so a test knows what a killed node did:
``SENT n`` once ``send`` returned, ``FAIL n`` when it raised, ``GOT <sender> n`` as the worker
handles a Ping, ``DONE`` when all are sent, ``LOSS <count>`` for each loss the bus reports.
With ``--pace S`` the worker takes S seconds over each Ping before it prints it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from fastapi_busproxy import BaseWorker, BusMessage, BusUnavailableError, WorkerRunner
from fastapi_busproxy.redis import RedisBus
from tests.redis_messages import Ping


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Recorder(BaseWorker):
    def __init__(self, name: str, pace: float) -> None:
        super().__init__(name)
        self.pace = pace

    async def on_bus_message(self, message: BusMessage) -> None:
        if isinstance(message, Ping):
            if self.pace:
                await asyncio.sleep(self.pace)  # a slow worker: its queue fills
            say(f"GOT {message.source} {message.n}")
        else:
            await super().on_bus_message(message)


async def stream(worker: BaseWorker, peer: str, first: int, count: int) -> None:
    for n in range(first, first + count):
        try:
            await worker.send_bus_message(Ping(source=worker.name, target=peer, n=n))
        except BusUnavailableError:
            say(f"FAIL {n}")
        else:
            say(f"SENT {n}")
        await asyncio.sleep(0.01)  # the load: about 100 messages a second
    say("DONE")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--worker", required=True)
    parser.add_argument("--prefix", default="busproxy")
    parser.add_argument("--peer")
    parser.add_argument("--first", type=int, default=1)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--pace", type=float, default=0.0)
    args = parser.parse_args()
    bus = RedisBus(
        args.url,
        prefix=args.prefix,
        heartbeat_interval=0.2,
        heartbeat_ttl=0.8,
        publish_timeout=15.0,
        delivery="durable",
    )
    bus.add_loss_listener(lambda loss: say(f"LOSS {loss.reason} {loss.count}"))
    runner = WorkerRunner(name=f"node-{args.worker}", bus=bus)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with runner:
        worker = Recorder(args.worker, args.pace)
        await runner.add_workers(worker)
        say(f"READY {os.getpid()}")
        sender = None
        if args.peer and args.count:
            sender = asyncio.create_task(stream(worker, args.peer, args.first, args.count))
        await stop.wait()
        if sender is not None:
            sender.cancel()


if __name__ == "__main__":
    asyncio.run(main())
