"""Receipts: the bus says when every local subscriber that took a message has handled it.

Durable delivery on Redis acknowledges a stream entry on that word, so these are the cases it
relies on: handled, failed, several subscribers, a wait for room, a handler cancelled, a queue
closed with the message in it, a proxy that takes its queue to write in one batch, and a
link's send queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from fastapi_busproxy import BaseWorker, InMemoryBus, Interest, WorkerRunner
from fastapi_busproxy._receipt import Receipt, attach_receipt
from fastapi_busproxy.bus import Subscription
from fastapi_busproxy.messages import BusDataMessage, BusMessage
from fastapi_busproxy.proxy._outbox import Outbox

pytestmark = pytest.mark.anyio


@dataclass(kw_only=True)
class Note(BusDataMessage):
    n: int = 0


class Tally:
    """A receipt's ``done``: how many times it was called, and an event for the first."""

    def __init__(self) -> None:
        self.calls = 0
        self.called = asyncio.Event()

    def __call__(self) -> None:
        self.calls += 1
        self.called.set()


def noted(n: int, tally: Tally) -> tuple[Note, Receipt]:
    message = Note(source="a", target="b", n=n)
    receipt = Receipt(tally)
    attach_receipt(message, receipt)
    return message, receipt


class Gate:
    """A handler that holds each message until let through, and records it once done."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.entered = asyncio.Event()
        self.go = asyncio.Event()
        self.done: list[int] = []
        self._progress = asyncio.Event()

    async def __call__(self, message: BusMessage) -> None:
        self.entered.set()
        await self.go.wait()
        assert isinstance(message, Note)
        self.done.append(message.n)
        self._progress.set()
        if self.fail:
            raise RuntimeError("the handler failed")

    async def wait_done(self, count: int) -> None:
        while len(self.done) < count:
            self._progress.clear()
            await self._progress.wait()


@pytest.fixture
async def bus() -> AsyncIterator[InMemoryBus]:
    bus = InMemoryBus(capacity=1)
    await bus.start()
    yield bus
    await bus.stop()


async def test_done_once_the_handler_has_returned_not_when_queued(bus: InMemoryBus) -> None:
    gate = Gate()
    await bus.subscribe("b", gate, Interest.worker("b"))
    tally = Tally()
    message, receipt = noted(1, tally)
    await bus.send(message)
    receipt.release()  # the deliverer lets go
    await asyncio.wait_for(gate.entered.wait(), 5)
    assert tally.calls == 0  # queued and in the handler: not handled yet
    gate.go.set()
    await asyncio.wait_for(tally.called.wait(), 5)
    assert (gate.done, tally.calls) == ([1], 1)


async def test_a_handler_that_raises_has_finished_with_it(bus: InMemoryBus) -> None:
    gate = Gate(fail=True)
    gate.go.set()
    await bus.subscribe("b", gate, Interest.worker("b"))
    tally = Tally()
    message, receipt = noted(1, tally)
    await bus.send(message)
    receipt.release()
    await asyncio.wait_for(tally.called.wait(), 5)
    assert tally.calls == 1


async def test_done_when_the_last_of_several_subscribers_has_handled_it(
    bus: InMemoryBus,
) -> None:
    worker, watcher = Gate(), Gate()
    worker.go.set()
    await bus.subscribe("b", worker, Interest.worker("b"))
    await bus.subscribe("watcher", watcher, Interest(everything=True))
    tally = Tally()
    message, receipt = noted(1, tally)
    await bus.send(message)
    receipt.release()
    await asyncio.wait_for(watcher.entered.wait(), 5)
    assert worker.done == [1]
    assert tally.calls == 0  # the watcher has it in hand
    watcher.go.set()
    await asyncio.wait_for(tally.called.wait(), 5)
    assert tally.calls == 1


async def test_a_message_that_waited_for_room_is_held_from_before_it_is_queued(
    bus: InMemoryBus,
) -> None:
    gate = Gate()
    await bus.subscribe("b", gate, Interest.worker("b"))
    tallies = [Tally(), Tally(), Tally()]
    (m1, r1), (m2, r2), (m3, r3) = (noted(n, tallies[n - 1]) for n in (1, 2, 3))
    await bus.send(m1)  # queued, then in the handler
    await bus.send(m2)  # waits for the room m1 leaves, then queued (the queue holds 1)
    r1.release()
    r2.release()
    sending = asyncio.create_task(bus.send(m3))  # waits for room
    await asyncio.wait_for(gate.entered.wait(), 5)
    gate.go.set()
    # The handler may finish m3 before the sending task resumes: the deliverer still holds
    # m3's receipt then, so it is not done.
    await asyncio.wait_for(gate.wait_done(3), 5)
    await asyncio.wait_for(sending, 5)
    assert [t.calls for t in tallies] == [1, 1, 0]
    r3.release()
    assert [t.calls for t in tallies] == [1, 1, 1]


async def test_never_done_for_a_handler_cancelled_or_a_queue_closed_on_it() -> None:
    bus = InMemoryBus(capacity=4)
    await bus.start()
    gate = Gate()
    subscription = await bus.subscribe("b", gate, Interest.worker("b"))
    in_hand, queued = Tally(), Tally()
    m1, r1 = noted(1, in_hand)
    m2, r2 = noted(2, queued)
    await bus.send(m1)
    await bus.send(m2)
    r1.release()
    r2.release()
    await asyncio.wait_for(gate.entered.wait(), 5)
    await bus.unsubscribe(subscription)  # its task is cancelled with m1 in hand, m2 queued
    await bus.stop()
    assert (gate.done, in_hand.calls, queued.calls) == ([], 0, 0)


async def test_a_proxy_that_takes_its_queue_to_write_has_finished_with_it(
    bus: InMemoryBus,
) -> None:
    taken: list[int] = []
    during: list[list[int]] = []
    subscription: Subscription | None = None
    started = asyncio.Event()
    go = asyncio.Event()

    async def writer(message: BusMessage) -> None:
        # A proxy's handler: it writes what it holds and what is queued behind it.
        started.set()
        await go.wait()
        assert isinstance(message, Note)
        assert subscription is not None
        taken.append(message.n)
        while (more := subscription.take_queued()) is not None:
            assert isinstance(more, Note)
            taken.append(more.n)
        await asyncio.sleep(0)  # a write: what it took is not finished with until it returns
        during.append([t.calls for t in tallies])

    subscription = await bus.subscribe("b", writer, Interest.worker("b"))
    tallies = [Tally(), Tally()]
    m1, r1 = noted(1, tallies[0])
    m2, r2 = noted(2, tallies[1])
    await bus.send(m1)
    await bus.send(m2)
    r1.release()
    r2.release()
    await asyncio.wait_for(started.wait(), 5)
    assert [t.calls for t in tallies] == [0, 0]
    go.set()
    await asyncio.wait_for(tallies[0].called.wait(), 5)
    assert taken == [1, 2]
    assert during == [[0, 0]]
    assert [t.calls for t in tallies] == [1, 1]


def test_an_outbox_holds_what_it_queues_until_popped() -> None:
    outbox = Outbox(max_size=2, max_age=60)
    tallies = [Tally(), Tally(), Tally()]
    (m0, r0), (m1, r1), (m2, r2) = (noted(n, tally) for n, tally in enumerate(tallies))
    assert outbox.put_nowait(m0)
    assert outbox.put_nowait(m1)
    assert not outbox.put_nowait(m2)  # full: not queued, not held
    for receipt in (r0, r1, r2):
        receipt.release()  # the deliverer's: the outbox's hold keeps the first two
    assert [t.calls for t in tallies] == [0, 0, 1]
    outbox.pop(1)  # the link has it
    assert [t.calls for t in tallies] == [1, 0, 1]
    assert outbox.put_dropping_oldest(Note(source="a", target="b")) == 0
    assert outbox.put_dropping_oldest(Note(source="a", target="b")) == 1  # drops m1
    outbox.clear()  # not sent: never let go
    assert [t.calls for t in tallies] == [1, 0, 1]


class Watched(Receipt):
    """A receipt that says when it is voided."""

    def __init__(self, done: Tally) -> None:
        super().__init__(done)
        self.voided = asyncio.Event()

    def void(self) -> None:
        super().void()
        self.voided.set()


class Ending(BaseWorker):
    """Its ``stop()`` waits to be let through; records the Notes it handles."""

    def __init__(self) -> None:
        super().__init__("b")
        self.got: list[int] = []
        self.stopping = asyncio.Event()
        self.may_stop = asyncio.Event()

    async def on_bus_message(self, message: BusMessage) -> None:
        if isinstance(message, Note):
            self.got.append(message.n)
        else:
            await super().on_bus_message(message)

    async def stop(self) -> None:
        self.stopping.set()
        await self.may_stop.wait()
        await super().stop()


async def test_a_worker_that_ends_voids_what_it_discards_unhandled() -> None:
    worker = Ending()
    handled, discarded = Tally(), Tally()
    async with WorkerRunner(name="runner") as runner:
        await runner.add_workers(worker)
        message, receipt = noted(1, handled)
        await runner.bus.send(message)
        receipt.release()
        ending = asyncio.create_task(runner.end("done"))
        await asyncio.wait_for(worker.stopping.wait(), 5)
        # Ending: what comes now is taken off the queue and discarded, not handled.
        message = Note(source="a", target="b", n=2)
        receipt = Watched(discarded)
        attach_receipt(message, receipt)
        await runner.bus.send(message)
        receipt.release()
        await asyncio.wait_for(receipt.voided.wait(), 5)
        worker.may_stop.set()
        await asyncio.wait_for(ending, 5)
    assert worker.got == [1]
    assert (handled.calls, discarded.calls) == (1, 0)
