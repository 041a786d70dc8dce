"""The bounded two-lane mailbox behind every subscription: order, capacity, waiting, closing."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from fastapi_busproxy._mailbox import QUANTUM, Mailbox
from fastapi_busproxy.exceptions import BusClosedError

DATA = False
SYSTEM = True


async def yield_until_blocked(*tasks: asyncio.Task[object]) -> None:
    """Let ``tasks`` run until they wait; fail if one of them finishes instead."""
    for _ in range(5):
        await asyncio.sleep(0)
    for task in tasks:
        assert not task.done(), f"{task.get_name()} should be waiting"


def test_capacities_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Mailbox(0, 1)
    with pytest.raises(ValueError, match="at least 1"):
        Mailbox(1, 0)


@pytest.mark.anyio
async def test_data_lane_is_fifo() -> None:
    box: Mailbox[int] = Mailbox(10, 10)
    for item in range(5):
        assert box.offer(item, DATA)
    assert len(box) == 5
    assert [await box.get() for _ in range(5)] == [0, 1, 2, 3, 4]
    assert len(box) == 0


@pytest.mark.anyio
async def test_system_items_overtake_queued_data_and_stay_fifo() -> None:
    box: Mailbox[str] = Mailbox(10, 10)
    box.offer("d1", DATA)
    box.offer("d2", DATA)
    box.offer("s1", SYSTEM)
    box.offer("d3", DATA)
    box.offer("s2", SYSTEM)
    assert [await box.get() for _ in range(5)] == ["s1", "s2", "d1", "d2", "d3"]


def test_offer_refuses_when_its_lane_is_full_and_lanes_are_independent() -> None:
    box: Mailbox[str] = Mailbox(2, 1)
    assert box.offer("d1", DATA)
    assert box.offer("d2", DATA)
    assert not box.offer("d3", DATA)
    # A full data lane does not block the system lane, and the other way round.
    assert box.offer("s1", SYSTEM)
    assert not box.offer("s2", SYSTEM)
    assert len(box) == 3


@pytest.mark.anyio
async def test_get_waits_for_an_item() -> None:
    box: Mailbox[str] = Mailbox(1, 1)
    getter = asyncio.create_task(box.get())
    await yield_until_blocked(getter)
    box.offer("hello", DATA)
    with anyio.fail_after(5):
        assert await getter == "hello"


@pytest.mark.anyio
async def test_put_waits_for_room_then_queues() -> None:
    box: Mailbox[str] = Mailbox(1, 1)
    box.offer("first", DATA)
    putter = asyncio.create_task(box.put("second", DATA))
    await yield_until_blocked(putter)
    assert len(box) == 1

    assert await box.get() == "first"
    with anyio.fail_after(5):
        await putter
    assert await box.get() == "second"


@pytest.mark.anyio
async def test_waiting_putters_keep_their_order_and_offer_does_not_jump_the_queue() -> None:
    box: Mailbox[str] = Mailbox(1, 1)
    box.offer("0", DATA)
    first = asyncio.create_task(box.put("1", DATA))
    await yield_until_blocked(first)
    second = asyncio.create_task(box.put("2", DATA))
    await yield_until_blocked(second)

    assert await box.get() == "0"
    # The freed slot belongs to the oldest waiting sender, not to a newcomer.
    assert not box.offer("late", DATA)
    with anyio.fail_after(5):
        await first
        assert await box.get() == "1"
        await second
        assert await box.get() == "2"


@pytest.mark.anyio
async def test_a_waiting_data_putter_does_not_hold_back_system_offers() -> None:
    box: Mailbox[str] = Mailbox(1, 1)
    box.offer("d0", DATA)
    putter = asyncio.create_task(box.put("d1", DATA))
    await yield_until_blocked(putter)
    assert box.offer("s0", SYSTEM)
    assert await box.get() == "s0"
    putter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await putter


@pytest.mark.anyio
async def test_cancelled_put_does_not_queue() -> None:
    box: Mailbox[str] = Mailbox(1, 1)
    box.offer("kept", DATA)
    putter = asyncio.create_task(box.put("abandoned", DATA))
    await yield_until_blocked(putter)
    putter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await putter
    assert await box.get() == "kept"
    assert len(box) == 0
    assert box.offer("next", DATA), "the cancelled sender must not keep its place in line"


@pytest.mark.anyio
async def test_a_woken_putter_that_is_cancelled_passes_the_room_on() -> None:
    box: Mailbox[str] = Mailbox(1, 1)
    box.offer("0", DATA)
    first = asyncio.create_task(box.put("1", DATA))
    await yield_until_blocked(first)
    second = asyncio.create_task(box.put("2", DATA))
    await yield_until_blocked(second)

    assert await box.get() == "0"  # wakes ``first``...
    first.cancel()  # ...which gives up before it can use the room
    with anyio.fail_after(5):
        with pytest.raises(asyncio.CancelledError):
            await first
        await second
    assert await box.get() == "2"


@pytest.mark.anyio
async def test_close_returns_what_was_queued_and_fails_everyone_waiting() -> None:
    box: Mailbox[str] = Mailbox(1, 1)
    box.offer("d", DATA)
    box.offer("s", SYSTEM)
    putter = asyncio.create_task(box.put("waiting", DATA))
    await yield_until_blocked(putter)

    assert box.close() == ["s", "d"]
    assert box.closed
    assert len(box) == 0
    with anyio.fail_after(5), pytest.raises(BusClosedError):
        await putter
    with pytest.raises(BusClosedError):
        box.offer("after", DATA)
    with pytest.raises(BusClosedError):
        await box.put("after", SYSTEM)
    with pytest.raises(BusClosedError):
        await box.get()
    assert box.close() == [], "closing twice is harmless"


@pytest.mark.anyio
async def test_close_wakes_a_waiting_getter() -> None:
    box: Mailbox[str] = Mailbox(1, 1)
    getter = asyncio.create_task(box.get())
    await yield_until_blocked(getter)
    box.close()
    with anyio.fail_after(5), pytest.raises(BusClosedError):
        await getter


@pytest.mark.anyio
async def test_many_waiting_senders_are_served_oldest_first_by_a_fast_getter() -> None:
    # A shared worker fed by many links: the getter takes items faster than the woken
    # senders get to run; each sender still gets its turn, in order, and none is lost.
    box: Mailbox[int] = Mailbox(4, 1)
    for n in range(4):
        box.offer(n, DATA)
    senders = [asyncio.create_task(box.put(n, DATA)) for n in range(4, 300)]
    await yield_until_blocked(*senders)
    got: list[int] = []
    with anyio.fail_after(5):
        while len(got) < 300:
            got.append(await box.get())
        await asyncio.gather(*senders)
    assert got == list(range(300))
    assert all(lane.idle() for lane in box._lanes.values())  # nobody waits or is counted


# --- a lane per sender ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_senders_take_turns_and_each_stays_fifo() -> None:
    box: Mailbox[str] = Mailbox(100, 10)
    flood = [f"flood{n}" for n in range(QUANTUM + 2)]
    for item in flood:
        box.offer(item, DATA, "flooder")
    box.offer("a0", DATA, "alice")
    box.offer("a1", DATA, "alice")
    box.offer("b0", DATA, "bob")
    got = [await box.get() for _ in range(len(flood) + 3)]
    # A turn is up to QUANTUM items: the flooder's first QUANTUM, then alice's, bob's, and
    # the rest of the flood.
    assert got == [*flood[:QUANTUM], "a0", "a1", "b0", *flood[QUANTUM:]]


@pytest.mark.anyio
async def test_when_full_waiting_senders_get_the_room_in_turn() -> None:
    box: Mailbox[str] = Mailbox(3, 1)
    for n in range(3):
        assert box.offer(f"f{n}", DATA, "flooder")
    assert not box.offer("a0", DATA, "alice")  # full, for everyone
    floods = [asyncio.create_task(box.put(f"f{n}", DATA, "flooder")) for n in range(3, 6)]
    await yield_until_blocked(*floods)  # the flooder waits first, three times over...
    alice = asyncio.create_task(box.put("a0", DATA, "alice"))
    await yield_until_blocked(*floods, alice)
    with anyio.fail_after(5):
        assert await box.get() == "f0"
        await floods[0]  # ...and gets the first room,
        assert await box.get() == "f1"
        await alice  # but alice the next, not after the flooder's other waiting messages
    assert not floods[1].done()
    assert box.lane_length("alice") == 1
    with anyio.fail_after(5):
        got = [await box.get() for _ in range(3)]
        await asyncio.gather(*floods)
        got += [await box.get() for _ in range(2)]
    assert sorted(got) == ["a0", "f2", "f3", "f4", "f5"]
    assert [item for item in got if item.startswith("f")] == ["f2", "f3", "f4", "f5"]


@pytest.mark.anyio
async def test_admit_holds_back_the_head_of_a_lane_until_readmitted() -> None:
    held = {"flooder"}
    box: Mailbox[tuple[str, int]] = Mailbox(10, 10, admit=lambda item: item[0] not in held)
    box.offer(("flooder", 0), DATA, "flooder")
    box.offer(("flooder", 1), DATA, "flooder")
    box.offer(("alice", 0), DATA, "alice")
    assert await box.get() == ("alice", 0)  # the flooder's lane waits, alice's goes on
    getter = asyncio.create_task(box.get())
    await yield_until_blocked(getter)  # only held-back items are left
    held.clear()
    box.readmit()
    with anyio.fail_after(5):
        assert await getter == ("flooder", 0)
    assert await box.get() == ("flooder", 1)


@pytest.mark.anyio
async def test_a_sender_arriving_while_everything_queued_is_held_back_gets_in() -> None:
    # A worker at its job limit for a flooder: the queue is full of the flooder's requests,
    # the getter waits, and nothing will be readmitted soon. Another sender must not wait
    # for that: its item may go, so it is let in past the capacity and taken at once.
    box: Mailbox[str] = Mailbox(2, 1, admit=lambda item: not item.startswith("f"))
    assert box.offer("f0", DATA, "flooder")
    assert box.offer("f1", DATA, "flooder")
    getter = asyncio.create_task(box.get())
    await yield_until_blocked(getter)
    polite = asyncio.create_task(box.put("p0", DATA, "polite"))
    with anyio.fail_after(5):
        assert await getter == "p0"
        await polite
    assert box.lane_length("flooder") == 2


@pytest.mark.anyio
async def test_system_items_are_never_held_back() -> None:
    box: Mailbox[str] = Mailbox(10, 10, admit=lambda item: False)
    box.offer("d", DATA, "x")
    box.offer("s", SYSTEM)
    assert await box.get() == "s"
    assert len(box) == 1
    assert box.close() == ["d"]


@pytest.mark.anyio
async def test_an_item_that_may_go_passes_a_queue_full_of_held_back_items_at_once() -> None:
    box: Mailbox[str] = Mailbox(2, 1, admit=lambda item: not item.startswith("f"))
    assert box.offer("f0", DATA, "flooder")
    assert box.offer("f1", DATA, "flooder")
    assert not box.offer("f2", DATA, "flooder")  # full, and the flooder's items wait
    getter = asyncio.create_task(box.get())
    await yield_until_blocked(getter)  # nothing queued may go
    assert not box.offer("f2", DATA, "flooder")  # still nothing for the flooder
    assert box.offer("p0", DATA, "polite")  # but this may go: in, past the capacity
    assert not box.offer("p1", DATA, "polite")  # one item per sender, not more
    with anyio.fail_after(5):
        assert await getter == "p0"
