"""InMemoryBus: routing, per-subscriber order, bounded queues and their overflow policies."""

from __future__ import annotations

import asyncio
import logging
import tracemalloc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import ClassVar

import anyio
import pytest

from fastapi_busproxy import AsyncQueueBus, InMemoryBus, Interest, WorkerBus
from fastapi_busproxy.bus import Subscription
from fastapi_busproxy.exceptions import BusClosedError, BusFullError, ConfigurationError
from fastapi_busproxy.messages import BusDataMessage, BusMessage, BusSystemMessage, Overflow

pytestmark = pytest.mark.anyio


@dataclass(kw_only=True)
class Note(BusDataMessage):
    n: int = 0


@dataclass(kw_only=True)
class Lossy(BusDataMessage):
    overflow: ClassVar[Overflow] = Overflow.DROP
    n: int = 0
    payload: bytes = b""


@dataclass(kw_only=True)
class Urgent(BusSystemMessage):
    n: int = 0


@dataclass(kw_only=True)
class LossyUrgent(BusSystemMessage):
    overflow: ClassVar[Overflow] = Overflow.DROP
    n: int = 0


class Recorder:
    """A subscriber that records what it gets; ``hold()`` makes it stop at each message."""

    def __init__(self) -> None:
        self.received: list[BusMessage] = []
        self.arrived = asyncio.Event()  # set at each message
        self._gate: asyncio.Event | None = None

    def hold(self) -> None:
        self._gate = asyncio.Event()

    def release(self) -> None:
        assert self._gate is not None
        gate, self._gate = self._gate, None
        gate.set()

    async def __call__(self, message: BusMessage) -> None:
        self.received.append(message)
        self.arrived.set()
        if self._gate is not None:
            await self._gate.wait()

    async def wait_for(self, count: int) -> None:
        with anyio.fail_after(5):
            while len(self.received) < count:
                self.arrived.clear()
                await self.arrived.wait()

    def numbers(self) -> list[int]:
        return [m.n for m in self.received]  # type: ignore[attr-defined]


@pytest.fixture
async def bus() -> AsyncIterator[InMemoryBus]:
    bus = InMemoryBus()
    await bus.start()
    yield bus
    await bus.stop()


async def subscribe(
    bus: WorkerBus, name: str, interest: Interest | None = None, **kwargs: int
) -> tuple[Recorder, Subscription]:
    recorder = Recorder()
    subscription = await bus.subscribe(name, recorder, interest or Interest.worker(name), **kwargs)
    return recorder, subscription


async def start_send(bus: WorkerBus, message: BusMessage, **kwargs: object) -> asyncio.Task[None]:
    """Send in a task and check that the send is waiting (for room)."""
    task = asyncio.create_task(bus.send(message, **kwargs))  # type: ignore[arg-type]
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done(), "the send should wait for room"
    return task


async def test_not_running_bus_refuses_sends_and_subscriptions() -> None:
    bus = InMemoryBus()
    with pytest.raises(BusClosedError):
        await bus.send(Note(source="a"))
    with pytest.raises(BusClosedError):
        await bus.subscribe("x", Recorder(), Interest.worker("x"))
    await bus.start()
    await bus.stop()
    await bus.stop()  # stopping twice is harmless
    assert not bus.running
    with pytest.raises(BusClosedError):
        await bus.send(Note(source="a"))


def test_bus_configuration() -> None:
    assert AsyncQueueBus is InMemoryBus
    with pytest.raises(TypeError):
        WorkerBus()  # type: ignore[abstract]
    with pytest.raises(ConfigurationError):
        InMemoryBus(capacity=0)
    with pytest.raises(ConfigurationError):
        InMemoryBus(system_capacity=0)


async def test_routing_by_interest(bus: InMemoryBus) -> None:
    alice, _ = await subscribe(bus, "alice")
    bob, _ = await subscribe(bus, "bob")
    loner, _ = await subscribe(bus, "loner", Interest(targets=frozenset({"loner"})))
    spy, _ = await subscribe(bus, "spy", Interest(sources=frozenset({"bob"})))
    urgent_only, _ = await subscribe(bus, "urgent_only", Interest(types=(Urgent,)))
    monitor, _ = await subscribe(bus, "monitor", Interest(everything=True))

    await bus.send(Note(source="bob", target="alice", n=1))
    await bus.send(Note(source="carol", n=2))
    await bus.send(Urgent(source="carol", target="loner", n=3))
    await monitor.wait_for(3)
    await alice.wait_for(2)
    await bob.wait_for(1)
    await loner.wait_for(1)
    await spy.wait_for(1)
    await urgent_only.wait_for(1)

    assert alice.numbers() == [1, 2]
    assert bob.numbers() == [2]
    assert loner.numbers() == [3]
    assert spy.numbers() == [1]
    assert urgent_only.numbers() == [3]
    assert sorted(monitor.numbers()) == [1, 2, 3]  # the system message may overtake


async def test_data_messages_arrive_in_order(bus: InMemoryBus) -> None:
    recorder, subscription = await subscribe(bus, "r", capacity=1000)
    for n in range(500):
        await bus.send(Note(source="s", target="r", n=n))
    await recorder.wait_for(500)
    assert recorder.numbers() == list(range(500))
    assert subscription.delivered == 500


async def test_system_messages_overtake_queued_data(bus: InMemoryBus) -> None:
    recorder, subscription = await subscribe(bus, "r")
    recorder.hold()
    await bus.send(Note(source="s", target="r", n=1))
    await recorder.wait_for(1)  # the handler now holds message 1
    for n in (2, 3, 4):
        await bus.send(Note(source="s", target="r", n=n))
    await bus.send(Urgent(source="s", target="r", n=100))
    await bus.send(Urgent(source="s", target="r", n=101))
    assert subscription.queued == 5

    recorder.release()
    await recorder.wait_for(6)
    assert recorder.numbers() == [1, 100, 101, 2, 3, 4]


async def test_a_raising_handler_does_not_stop_its_delivery(
    bus: InMemoryBus, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[int] = []
    done = asyncio.Event()

    async def handler(message: BusMessage) -> None:
        assert isinstance(message, Note)
        seen.append(message.n)
        if message.n == 1:
            raise RuntimeError("handler bug")
        if message.n == 3:
            done.set()

    subscription = await bus.subscribe("fragile", handler, Interest.worker("fragile"))
    with caplog.at_level(logging.ERROR, logger="fastapi_busproxy.bus"):
        for n in (1, 2, 3):
            await bus.send(Note(source="s", target="fragile", n=n))
        with anyio.fail_after(5):
            await done.wait()
    assert seen == [1, 2, 3]
    assert subscription.errors == 1
    assert subscription.delivered == 2
    [record] = caplog.records
    assert "fragile" in record.getMessage()
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)


class Direct:
    """A direct handler that takes even-numbered notes and records them."""

    def __init__(self) -> None:
        self.taken: list[int] = []
        self.fail_on: int | None = None

    async def __call__(self, message: BusMessage) -> bool:
        assert isinstance(message, Note)
        if message.n == self.fail_on:
            raise RuntimeError("direct handler bug")
        if message.n % 2:
            return False
        self.taken.append(message.n)
        return True


async def test_an_idle_subscriber_takes_messages_directly(bus: InMemoryBus) -> None:
    recorder = Recorder()
    direct = Direct()
    subscription = await bus.subscribe("r", recorder, Interest.worker("r"), direct=direct)
    for n in (0, 2, 4):
        await bus.send(Note(source="s", target="r", n=n))
    # Taken in the sender's task: done when send() returns, the handler never saw them.
    assert direct.taken == [0, 2, 4]
    await bus.send(Note(source="s", target="r", n=1))  # refused by the direct handler
    await recorder.wait_for(1)
    assert recorder.numbers() == [1]
    assert subscription.delivered == 4


async def test_nothing_goes_direct_past_a_message_still_queued(bus: InMemoryBus) -> None:
    recorder = Recorder()
    direct = Direct()
    subscription = await bus.subscribe("r", recorder, Interest.worker("r"), direct=direct)
    recorder.hold()
    await bus.send(Note(source="s", target="r", n=1))  # queued: the handler holds it
    await recorder.wait_for(1)
    await bus.send(Note(source="s", target="r", n=2))  # the handler is busy: queued
    await bus.send(Note(source="s", target="r", n=3))
    await bus.send(Note(source="s", target="r", n=4))
    assert direct.taken == []
    assert subscription.queued == 3
    recorder.release()
    await recorder.wait_for(4)
    assert recorder.numbers() == [1, 2, 3, 4]
    await bus.send(Note(source="s", target="r", n=6))  # idle again
    assert direct.taken == [6]


async def test_a_raising_direct_handler_is_counted_and_harms_nobody(
    bus: InMemoryBus, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder()
    direct = Direct()
    direct.fail_on = 2
    subscription = await bus.subscribe("r", recorder, Interest.worker("r"), direct=direct)
    with caplog.at_level(logging.ERROR, logger="fastapi_busproxy.bus"):
        await bus.send(Note(source="s", target="r", n=2))  # the sender does not see the bug
    assert subscription.errors == 1
    assert "r" in caplog.records[0].getMessage()
    await bus.send(Note(source="s", target="r", n=4))
    await bus.send(Note(source="s", target="r", n=5))
    await recorder.wait_for(1)
    assert direct.taken == [4]
    assert recorder.numbers() == [5]


async def test_wait_policy_makes_the_sender_wait_for_room(bus: InMemoryBus) -> None:
    recorder, subscription = await subscribe(bus, "slow", capacity=1)
    recorder.hold()
    await bus.send(Note(source="s", target="slow", n=1))
    await recorder.wait_for(1)
    await bus.send(Note(source="s", target="slow", n=2))  # fills the queue

    sending = await start_send(bus, Note(source="s", target="slow", n=3))
    assert subscription.queued == 1

    recorder.release()  # message 2 leaves the queue: room for 3
    with anyio.fail_after(5):
        await sending
    await recorder.wait_for(3)
    assert recorder.numbers() == [1, 2, 3]
    assert subscription.dropped == 0


async def test_a_full_subscriber_does_not_hold_back_the_others(bus: InMemoryBus) -> None:
    slow, _ = await subscribe(bus, "slow", capacity=1)
    fast, _ = await subscribe(bus, "fast", capacity=1)
    slow.hold()
    await bus.send(Note(source="s", n=1))
    await slow.wait_for(1)
    await fast.wait_for(1)
    await bus.send(Note(source="s", n=2))  # slow's queue is now full

    sending = await start_send(bus, Note(source="s", n=3))
    await fast.wait_for(3)  # fast got message 3 while the send waits for slow
    slow.release()
    with anyio.fail_after(5):
        await sending
    await slow.wait_for(3)


async def test_wait_with_timeout_raises_bus_full_and_does_not_queue(bus: InMemoryBus) -> None:
    slow, subscription = await subscribe(bus, "slow", capacity=1)
    other, _ = await subscribe(bus, "other")
    slow.hold()
    await bus.send(Note(source="s", n=1))
    await slow.wait_for(1)
    await bus.send(Note(source="s", n=2))

    with pytest.raises(BusFullError, match="slow"):
        await bus.send(Note(source="s", n=3), timeout=0.01)
    assert subscription.queued == 1
    await other.wait_for(3)  # recipients with room got it
    assert other.numbers() == [1, 2, 3]

    slow.release()
    await slow.wait_for(2)
    await bus.send(Note(source="s", target="slow", n=4))
    await slow.wait_for(3)
    assert slow.numbers() == [1, 2, 4]


async def test_cancelling_a_waiting_send_leaves_the_message_unqueued(bus: InMemoryBus) -> None:
    slow, subscription = await subscribe(bus, "slow", capacity=1)
    slow.hold()
    await bus.send(Note(source="s", target="slow", n=1))
    await slow.wait_for(1)
    await bus.send(Note(source="s", target="slow", n=2))
    sending = await start_send(bus, Note(source="s", target="slow", n=3))
    sending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sending

    slow.release()
    await slow.wait_for(2)
    await bus.send(Note(source="s", target="slow", n=4))
    await slow.wait_for(3)
    assert slow.numbers() == [1, 2, 4]
    assert subscription.queued == 0


async def test_a_send_waiting_for_a_subscriber_that_leaves_returns(bus: InMemoryBus) -> None:
    slow, subscription = await subscribe(bus, "slow", capacity=1)
    slow.hold()
    await bus.send(Note(source="s", target="slow", n=1))
    await slow.wait_for(1)
    await bus.send(Note(source="s", target="slow", n=2))
    sending = await start_send(bus, Note(source="s", target="slow", n=3))
    await bus.unsubscribe(subscription)
    with anyio.fail_after(5):
        await sending


async def test_drop_policy_counts_and_logs(
    bus: InMemoryBus, caplog: pytest.LogCaptureFixture
) -> None:
    slow, subscription = await subscribe(bus, "slow", capacity=2)
    slow.hold()
    await bus.send(Lossy(source="s", target="slow", n=0))
    await slow.wait_for(1)
    with caplog.at_level(logging.WARNING, logger="fastapi_busproxy.bus"):
        for n in range(1, 6):
            await bus.send(Lossy(source="s", target="slow", n=n))  # never waits
    assert subscription.queued == 2
    assert subscription.dropped == 3
    assert caplog.records, "a drop is logged"
    assert all(r.levelno == logging.WARNING for r in caplog.records)
    assert "slow" in caplog.records[0].getMessage()

    slow.release()
    await slow.wait_for(3)
    assert slow.numbers() == [0, 1, 2]


async def test_the_sender_chooses_the_policy_per_send(bus: InMemoryBus) -> None:
    slow, subscription = await subscribe(bus, "slow", capacity=1)
    slow.hold()
    await bus.send(Note(source="s", target="slow", n=1))
    await slow.wait_for(1)
    await bus.send(Note(source="s", target="slow", n=2))

    # A WAIT message sent with DROP is dropped...
    await bus.send(Note(source="s", target="slow", n=3), overflow=Overflow.DROP)
    assert subscription.dropped == 1
    # ...and a DROP message sent with WAIT waits.
    with pytest.raises(BusFullError):
        await bus.send(Lossy(source="s", target="slow", n=4), overflow=Overflow.WAIT, timeout=0.01)
    assert subscription.dropped == 1
    assert subscription.queued == 1


async def test_system_messages_are_never_dropped(bus: InMemoryBus) -> None:
    slow, subscription = await subscribe(bus, "slow", system_capacity=1)
    slow.hold()
    await bus.send(Urgent(source="s", target="slow", n=1))
    await slow.wait_for(1)
    await bus.send(LossyUrgent(source="s", target="slow", n=2))  # fills the system lane

    waiting = [
        await start_send(bus, LossyUrgent(source="s", target="slow", n=3)),
        await start_send(bus, Urgent(source="s", target="slow", n=4), overflow=Overflow.DROP),
    ]
    assert subscription.dropped == 0
    slow.release()
    await slow.wait_for(4)
    with anyio.fail_after(5):
        await asyncio.gather(*waiting)
    assert slow.numbers() == [1, 2, 3, 4]
    assert subscription.dropped == 0


async def test_unsubscribe_from_inside_the_handler(bus: InMemoryBus) -> None:
    received: list[int] = []
    finished = asyncio.Event()
    subscription: Subscription | None = None

    async def handler(message: BusMessage) -> None:
        assert isinstance(message, Note)
        assert subscription is not None
        received.append(message.n)
        await bus.unsubscribe(subscription)
        finished.set()  # the handler itself runs to its end

    subscription = await bus.subscribe("quitter", handler, Interest.worker("quitter"))
    for n in (1, 2, 3):
        await bus.send(Note(source="s", target="quitter", n=n))
    with anyio.fail_after(5):
        await finished.wait()
    await bus.send(Note(source="s", target="quitter", n=4))
    assert subscription._task is not None
    with anyio.fail_after(5):
        await subscription._task
    assert received == [1]
    assert subscription.closed
    assert subscription not in bus.subscriptions


async def test_unsubscribe_discards_what_is_queued(bus: InMemoryBus) -> None:
    recorder, subscription = await subscribe(bus, "r")
    recorder.hold()
    for n in range(4):
        await bus.send(Note(source="s", target="r", n=n))
    await recorder.wait_for(1)
    await bus.unsubscribe(subscription)
    await bus.unsubscribe(subscription)  # idempotent
    await bus.send(Note(source="s", target="r", n=99))  # no recipient any more: not an error
    assert recorder.numbers() == [0]
    assert subscription.queued == 0


async def test_stop_cancels_the_delivery_tasks() -> None:
    bus = InMemoryBus()
    await bus.start()
    cancelled = asyncio.Event()
    entered = asyncio.Event()

    async def stuck(message: BusMessage) -> None:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    subscription = await bus.subscribe("stuck", stuck, Interest.worker("stuck"))
    await bus.send(Note(source="s", target="stuck"))
    with anyio.fail_after(5):
        await entered.wait()
        await bus.stop()
    assert cancelled.is_set()
    assert subscription._task is not None
    assert subscription._task.done()
    assert bus.subscriptions == []
    with pytest.raises(BusClosedError):
        await bus.send(Note(source="s", target="stuck"))


async def test_flooding_a_stuck_subscriber_stays_bounded(bus: InMemoryBus) -> None:
    """A subscriber that stops consuming costs its capacity in memory, not the flood's size."""
    total, capacity = 50_000, 100

    def flood_message(n: int) -> Lossy:
        return Lossy(source="producer", target="stuck", n=n, payload=bytes(200))

    stuck, subscription = await subscribe(bus, "stuck", capacity=capacity)
    stuck.hold()
    await bus.send(flood_message(0))
    await stuck.wait_for(1)  # message 0 is in flight: the handler holds it

    tracemalloc.start()
    try:
        # What the flood would cost if it were kept.
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        kept = [flood_message(n) for n in range(1, total)]
        holding_all = tracemalloc.get_traced_memory()[1] - before
        del kept

        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for n in range(1, total):
            await bus.send(flood_message(n))
            if n % 1000 == 0:
                assert subscription.queued <= capacity
        flood_peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()

    assert subscription.queued == capacity
    assert subscription.dropped == total - capacity - 1
    assert flood_peak < holding_all / 20, (flood_peak, holding_all)

    stuck.release()
    await stuck.wait_for(capacity + 1)
    assert stuck.numbers() == list(range(capacity + 1))  # the newest were dropped


async def test_offer_sends_only_what_needs_no_waiting(bus: InMemoryBus) -> None:
    """A link's fast path: delivered now to a lone recipient with room, or not at all."""
    recorder, subscription = await subscribe(bus, "slow", capacity=1)
    other, _ = await subscribe(bus, "other", capacity=1)
    recorder.hold()
    assert bus.offer(Note(source="s", target="slow", n=1))
    await recorder.wait_for(1)  # taken, and held in the handler
    assert bus.offer(Note(source="s", target="slow", n=2))  # fills the queue
    assert not bus.offer(Note(source="s", target="slow", n=3))  # full: nothing done
    assert subscription.queued == 1
    assert not bus.offer(Note(source="s", n=4))  # two recipients: nothing done
    assert subscription.queued == 1
    assert other.received == []
    assert bus.offer(Note(source="s", target="nobody", n=5))  # nobody wants it: done
    recorder.release()
    await recorder.wait_for(2)
    assert recorder.numbers() == [1, 2]
    await bus.stop()
    assert not bus.offer(Note(source="s", target="slow", n=6))  # not running: send() says so

