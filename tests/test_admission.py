"""Admission: a worker serves a bounded number of jobs at once, fairly among requesters, and a
sender that floods a worker makes only itself wait (on the in-memory bus)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import anyio
import pytest

from fastapi_busproxy import (
    BaseWorker,
    BusDataMessage,
    BusJobRequestMessage,
    BusMessage,
    JobLimits,
    JobParams,
    WorkerRunner,
)
from fastapi_busproxy._mailbox import QUANTUM

pytestmark = pytest.mark.anyio


class Gated(BaseWorker):
    """Serves each job once its gate opens; records how many run at once, per requester."""

    def __init__(self, name: str, limits: JobLimits) -> None:
        super().__init__(name, job_limits=limits)
        self.gate = asyncio.Event()
        self.running: dict[str, int] = {}
        self.most: dict[str, int] = {}
        self.most_in_all = 0
        self.started: list[str] = []
        self.changed = asyncio.Event()

    async def on_job_request(self, message: BusJobRequestMessage) -> dict[str, Any]:
        source = message.source
        self.running[source] = self.running.get(source, 0) + 1
        self.most[source] = max(self.most.get(source, 0), self.running[source])
        self.most_in_all = max(self.most_in_all, sum(self.running.values()))
        self.started.append(source)
        self.changed.set()
        try:
            if (message.payload or {}).get("wait", True):
                await self.gate.wait()
            return {"by": self.name}
        finally:
            self.running[source] -= 1


async def wait_until(event: asyncio.Event, predicate: Any) -> None:
    with anyio.fail_after(5):
        while not predicate():
            event.clear()
            await event.wait()


async def test_jobs_past_the_limits_wait_and_other_requesters_go_first() -> None:
    server = Gated("server", JobLimits(max_jobs=4, max_jobs_per_source=2))
    flooder, polite = BaseWorker("flooder"), BaseWorker("polite")
    async with WorkerRunner(handle_sigint=False) as runner:
        await runner.add_workers(server, flooder, polite)
        floods = [
            asyncio.create_task(flooder.job("server", params=JobParams(timeout=10)).__aenter__())
            for _ in range(6)
        ]
        await wait_until(server.changed, lambda: server.running.get("flooder") == 2)
        # The flooder's other four requests wait; a job of another requester is served now.
        quick = JobParams(payload={"wait": False}, timeout=5)
        async with polite.job("server", params=quick) as job:
            pass
        assert job.response == {"by": "server"}
        assert server.running["flooder"] == 2
        assert len(server.active_jobs) == 2
        server.gate.set()
        contexts = await asyncio.gather(*floods)
        for context in contexts:
            await context.__aexit__(None, None, None)
            assert context.response == {"by": "server"}
    assert server.most["flooder"] == 2
    assert server.most_in_all <= 4
    assert server.started.count("flooder") == 6


async def test_the_total_limit_holds_for_many_requesters() -> None:
    server = Gated("server", JobLimits(max_jobs=3, max_jobs_per_source=3))
    callers = [BaseWorker(f"caller-{n}") for n in range(6)]
    async with WorkerRunner(handle_sigint=False) as runner:
        await runner.add_workers(server, *callers)

        async def ask(caller: BaseWorker) -> dict[str, Any]:
            async with caller.job("server", params=JobParams(timeout=10)) as job:
                pass
            return job.response

        asks = [asyncio.create_task(ask(caller)) for caller in callers]
        await wait_until(server.changed, lambda: sum(server.running.values()) == 3)
        assert len(server.active_jobs) == 3
        server.gate.set()
        assert await asyncio.gather(*asks) == [{"by": "server"}] * 6
    assert server.most_in_all == 3


@dataclass(kw_only=True)
class Note(BusDataMessage):
    n: int


class Slow(BaseWorker):
    """Handles one message per turn of its gate: shows the order the bus hands them over."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.seen: list[tuple[str, int]] = []
        self.got = asyncio.Event()

    async def on_bus_message(self, message: BusMessage) -> None:
        await super().on_bus_message(message)
        if isinstance(message, Note):
            self.seen.append((message.source, message.n))
            self.got.set()
            await asyncio.sleep(0)


async def test_a_flooding_sender_waits_while_another_sender_is_served_in_turn() -> None:
    worker = Slow("shared")
    async with WorkerRunner(handle_sigint=False) as runner:
        await runner.add_workers(worker)
        bus = runner.bus
        notes = [Note(source="flooder", target="shared", n=n) for n in range(300)]
        flood = asyncio.gather(*(bus.send(note) for note in notes))
        await wait_until(worker.got, lambda: len(worker.seen) >= 1)
        assert worker.subscription is not None
        assert worker.subscription.queued > 100  # hundreds of the flooder's wait in line
        sent_at = len(worker.seen)
        await bus.send(Note(source="polite", target="shared", n=0))
        await wait_until(worker.got, lambda: ("polite", 0) in worker.seen)
        # Served on its turn: after at most one turn of the flooder's (QUANTUM messages), not
        # after the hundreds queued before it.
        assert worker.seen.index(("polite", 0)) <= sent_at + QUANTUM
        with anyio.fail_after(10):
            await flood
        await wait_until(worker.got, lambda: len(worker.seen) == 301)
    assert [n for source, n in worker.seen if source == "flooder"] == list(range(300))
