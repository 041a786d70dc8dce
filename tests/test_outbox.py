"""Outbox: the bounded queue of messages waiting to cross a link."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import anyio
import pytest

from fastapi_busproxy.exceptions import ConfigurationError
from fastapi_busproxy.messages import BusDataMessage, BusMessage
from fastapi_busproxy.proxy import _outbox
from fastapi_busproxy.proxy._outbox import Outbox

pytestmark = pytest.mark.anyio


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    # Replace the module's view of `time` only: the event loop keeps the real clock.
    fake = Clock()
    monkeypatch.setattr(_outbox, "time", SimpleNamespace(monotonic=fake.monotonic))
    return fake


def msg(n: int) -> BusMessage:
    return BusDataMessage(source=f"s{n}", target="voice")


def contents(outbox: Outbox) -> list[BusMessage]:
    return outbox.peek(max(1, len(outbox)))


async def yield_until_blocked(task: asyncio.Task[None]) -> None:
    for _ in range(10):
        await asyncio.sleep(0)
    assert not task.done()


async def test_put_nowait_until_full() -> None:
    outbox = Outbox(max_size=3)
    assert [outbox.put_nowait(msg(n)) for n in range(5)] == [True, True, True, False, False]
    assert len(outbox) == 3
    assert outbox.full
    assert contents(outbox) == [msg(0), msg(1), msg(2)]
    assert outbox.overflowed == 0  # a refused put is the caller's to handle, not a drop


async def test_put_dropping_oldest_keeps_newest_and_counts() -> None:
    outbox = Outbox(max_size=3)
    assert [outbox.put_dropping_oldest(msg(n)) for n in range(3)] == [0, 0, 0]
    assert outbox.overflowed == 0
    assert outbox.put_dropping_oldest(msg(3)) == 1
    assert outbox.put_dropping_oldest(msg(4)) == 1
    assert len(outbox) == 3
    assert contents(outbox) == [msg(2), msg(3), msg(4)]
    assert outbox.overflowed == 2


async def test_zero_size_outbox_is_refused_or_keeps_nothing() -> None:
    try:
        outbox = Outbox(max_size=0)
    except ConfigurationError:
        return
    assert outbox.put_dropping_oldest(msg(0)) in (0, 1)
    assert len(outbox) == 0


async def test_order_preserved_through_peek_and_pop() -> None:
    outbox = Outbox(max_size=10)
    for n in range(6):
        outbox.put_nowait(msg(n))
    assert outbox.peek(1) == [msg(0)]
    assert outbox.peek(4) == [msg(0), msg(1), msg(2), msg(3)]
    assert len(outbox) == 6  # peeking does not remove
    outbox.pop(4)
    assert outbox.peek(10) == [msg(4), msg(5)]
    outbox.pop(10)  # popping more than there is empties it
    assert len(outbox) == 0
    assert not outbox
    assert outbox.peek(1) == []
    assert outbox.peek(5) == []


async def test_peek_of_a_single_message() -> None:
    outbox = Outbox(max_size=10)
    outbox.put_nowait(msg(7))
    assert outbox.peek(64) == [msg(7)]


async def test_clear_returns_count() -> None:
    outbox = Outbox(max_size=5)
    for n in range(3):
        outbox.put_nowait(msg(n))
    assert outbox.clear() == 3
    assert len(outbox) == 0
    assert outbox.put_nowait(msg(9))


async def test_expire_without_max_age_keeps_everything(clock: Clock) -> None:
    outbox = Outbox(max_size=5, max_age=None)
    outbox.put_nowait(msg(0))
    clock.now += 10**6
    assert outbox.expire() == 0
    assert contents(outbox) == [msg(0)]


async def test_expire_drops_messages_older_than_max_age(clock: Clock) -> None:
    outbox = Outbox(max_size=10, max_age=5.0)
    outbox.put_nowait(msg(0))  # t=1000
    clock.now += 2.0
    outbox.put_dropping_oldest(msg(1))  # t=1002
    clock.now += 2.0
    outbox.put_nowait(msg(2))  # t=1004

    clock.now = 1005.0  # msg 0 is exactly max_age old: kept
    assert outbox.expire() == 0
    assert len(outbox) == 3

    clock.now = 1005.5
    assert outbox.expire() == 1
    assert contents(outbox) == [msg(1), msg(2)]

    clock.now = 1010.0
    assert outbox.expire() == 2
    assert len(outbox) == 0
    assert outbox.expired == 3
    assert outbox.overflowed == 0


async def test_expire_makes_room_for_a_waiting_sender(clock: Clock) -> None:
    outbox = Outbox(max_size=1, max_age=1.0)
    outbox.put_nowait(msg(0))
    waiter = asyncio.create_task(outbox.wait_for_room())
    try:
        await yield_until_blocked(waiter)
        clock.now += 2.0
        assert outbox.expire() == 1
        with anyio.fail_after(5):
            await waiter
    finally:
        waiter.cancel()
    assert outbox.put_nowait(msg(1))


async def test_wait_for_room_returns_at_once_when_not_full() -> None:
    outbox = Outbox(max_size=2)
    outbox.put_nowait(msg(0))
    with anyio.fail_after(5):
        await outbox.wait_for_room()
    assert len(outbox) == 1


async def test_wait_for_room_wakes_when_popped() -> None:
    outbox = Outbox(max_size=2)
    outbox.put_nowait(msg(0))
    outbox.put_nowait(msg(1))
    assert not outbox.put_nowait(msg(2))
    waiter = asyncio.create_task(outbox.wait_for_room())
    try:
        await yield_until_blocked(waiter)
        outbox.pop(1)
        with anyio.fail_after(5):
            await waiter
    finally:
        waiter.cancel()
    assert outbox.put_nowait(msg(2))
    assert contents(outbox) == [msg(1), msg(2)]


async def test_wait_for_room_wakes_when_cleared() -> None:
    outbox = Outbox(max_size=1)
    outbox.put_nowait(msg(0))
    waiter = asyncio.create_task(outbox.wait_for_room())
    try:
        await yield_until_blocked(waiter)
        outbox.clear()
        with anyio.fail_after(5):
            await waiter
    finally:
        waiter.cancel()


def test_every_put_wakes_the_link() -> None:
    """A running link's writer is woken by each message queued (and only then)."""
    outbox = Outbox(max_size=1)
    woken: list[int] = []
    outbox.wake = lambda: woken.append(len(outbox))
    outbox.put_nowait(msg(0))
    assert not outbox.put_nowait(msg(1))  # full: nothing queued, nobody woken
    outbox.put_dropping_oldest(msg(2))
    assert woken == [1, 1]


def test_without_a_link_a_put_wakes_nobody() -> None:
    outbox = Outbox(max_size=2)
    assert outbox.put_nowait(msg(0))
    assert outbox.put_dropping_oldest(msg(1)) == 0
    assert len(outbox) == 2
