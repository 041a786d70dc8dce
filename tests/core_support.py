"""Shared test helpers: a recording worker, a runner, leak checks, and a Ping/Pong echo worker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio

from fastapi_busproxy import BaseWorker, WorkerRunner
from fastapi_busproxy.messages import BusDataMessage, BusMessage, BusSystemMessage


@dataclass(kw_only=True)
class Hello(BusDataMessage):
    text: str = ""


@dataclass(kw_only=True)
class Alert(BusSystemMessage):
    text: str = ""


@dataclass(kw_only=True)
class Ping(BusDataMessage):
    text: str


@dataclass(kw_only=True)
class Pong(BusDataMessage):
    text: str


class Echo(BaseWorker):
    """Answers every Ping with a Pong to its sender."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.received: list[BusMessage] = []

    async def on_bus_message(self, message: BusMessage) -> None:
        if isinstance(message, Ping):
            self.received.append(message)
            await self.send_bus_message(
                Pong(source=self.name, target=message.source, text=message.text.upper())
            )
        else:
            await super().on_bus_message(message)


class EventLog:
    """Records every event a worker emits; ``await log.wait("on_x")`` waits for one."""

    def __init__(self, worker: BaseWorker) -> None:
        self.fired: list[tuple[str, tuple[Any, ...]]] = []
        self._changed = asyncio.Event()
        for event in sorted(worker.event_names):
            worker.add_event_handler(event, self._recorder(event))

    def _recorder(self, event: str) -> Any:
        def record(worker: BaseWorker, *args: Any) -> None:
            self.fired.append((event, args))
            self._changed.set()

        return record

    def args_of(self, event: str) -> list[tuple[Any, ...]]:
        return [args for name, args in self.fired if name == event]

    async def wait(self, event: str, count: int = 1) -> list[tuple[Any, ...]]:
        with anyio.fail_after(5):
            while len(self.args_of(event)) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.args_of(event)


class Probe(BaseWorker):
    """Records the Hello and Alert messages it gets; ``hold()`` makes it stop at each one."""

    def __init__(self, name: str, *, active: bool = True) -> None:
        super().__init__(name, active=active)
        self.received: list[BusMessage] = []
        self.hooks: list[tuple[Any, ...]] = []
        self._arrived = asyncio.Event()
        self._gate: asyncio.Event | None = None

    def hold(self) -> None:
        self._gate = asyncio.Event()

    def release(self) -> None:
        assert self._gate is not None
        gate, self._gate = self._gate, None
        gate.set()

    def texts(self) -> list[str]:
        return [m.text for m in self.received]  # type: ignore[attr-defined]

    async def wait_received(self, count: int) -> None:
        with anyio.fail_after(5):
            while len(self.received) < count:
                self._arrived.clear()
                await self._arrived.wait()

    async def start(self) -> None:
        self.hooks.append(("start",))
        await super().start()

    async def stop(self) -> None:
        self.hooks.append(("stop",))
        await super().stop()

    async def on_activated(self, args: dict[str, Any] | None) -> None:
        self.hooks.append(("on_activated", args))

    async def on_deactivated(self) -> None:
        self.hooks.append(("on_deactivated",))

    async def on_bus_message(self, message: BusMessage) -> None:
        if isinstance(message, (Hello, Alert)):
            self.received.append(message)
            self._arrived.set()
            if self._gate is not None:
                await self._gate.wait()
        else:
            await super().on_bus_message(message)


@asynccontextmanager
async def running(*workers: BaseWorker, name: str = "test-runner") -> AsyncIterator[WorkerRunner]:
    """A started runner with ``workers`` ready; cancelled on the way out."""
    runner = WorkerRunner(name=name)
    await runner.start()
    try:
        await runner.add_workers(*workers)
        yield runner
    finally:
        with anyio.fail_after(5):
            await runner.cancel("test over")


async def settle(*workers: BaseWorker) -> None:
    """Wait until the tasks the workers own (serving jobs, firing events) have ended."""
    with anyio.fail_after(5):
        for worker in workers:
            while tasks := set(worker._tasks._tasks):
                await asyncio.wait(tasks)


async def assert_no_leaks(runner: WorkerRunner, *workers: BaseWorker) -> None:
    """After the jobs are over: no job state, no task, no registry watcher is left behind."""
    await settle(*workers)
    for worker in workers:
        assert worker.job_groups == {}, worker.name
        assert worker.active_jobs == {}, worker.name
        assert len(worker._tasks) == 0, worker.name
    assert runner.registry.watcher_count() == 0


async def wait_finished(*workers: BaseWorker) -> None:
    with anyio.fail_after(5):
        for worker in workers:
            await worker.wait()
