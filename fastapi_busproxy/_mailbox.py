"""A bounded queue with a lane per sender: system messages first, then senders in turn.

Data items are queued in a lane per *key* (the bus uses the sender's name), each lane FIFO;
``get()`` takes the lanes in turn (round-robin, up to :data:`QUANTUM` items a turn), so the
items of one sender that floods a subscriber do not delay every other sender's. The data lanes
share ``capacity`` items in all. When they are full, senders wait (``put()``), and the room
freed by the items taken goes to the waiting senders in turn, a *burst* of up to
:data:`QUANTUM` items each: the woken sender queues its item, and further items from the same
sender in the same turn of the event loop (the rest of a batch read from one socket) take the
rest of the burst without waiting; what it does not take returns to the pool at the end of that
turn. A flooder waits for its turn like everyone else, instead of filling the room it frees,
and a link's batch stays together in its lane, so it is handled, and answered, together.
System items have one lane of their own, bounded by ``system_capacity``, taken before any data
item.

``offer()`` never waits. An optional ``admit(item)`` predicate holds an item back at the head of
its lane while it returns ``False`` (a worker at its limit of jobs in flight); the other lanes
go on, and :meth:`Mailbox.readmit` asks ``get()`` to look again.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from .exceptions import BusClosedError

_T = TypeVar("_T")

_SWEEP_AT = 64  # lanes a mailbox keeps, idle or not, before it sweeps the idle ones

QUANTUM = 16
"""Items taken in a row from one sender's lane before the next sender's turn. More than one,
so that a burst from one link (a batch from its socket) is handled, and answered, together:
its answers then leave in one batch too. A flooder delays another sender by at most this."""


class _Lane(Generic[_T]):
    """One sender's items (a list read from ``head``: lanes come and go with traffic, and a
    list costs a tenth of a deque to make), the senders waiting to add to it, oldest first,
    and the room left of the burst its sender was last woken with."""

    __slots__ = ("grant", "head", "items", "n", "putters")

    def __init__(self) -> None:
        self.items: list[_T] = []
        self.head = 0
        self.n = 0  # items not yet read
        self.putters: deque[asyncio.Future[int]] | None = None
        self.grant = 0  # reserved room this sender may still take in this turn of the loop

    def first(self) -> _T:
        return self.items[self.head]

    def pop(self) -> _T:
        items = self.items
        item = items[self.head]
        self.n -= 1
        self.head += 1
        if self.head == len(items):
            items.clear()
            self.head = 0
        elif self.head >= 32 and self.head * 2 >= len(items):
            del items[: self.head]  # drop what was read, now and then
            self.head = 0
        return item

    def idle(self) -> bool:
        return not self.n and not self.putters and not self.grant


class Mailbox(Generic[_T]):
    __slots__ = (
        "_admit",
        "_burst",
        "_burst_room",
        "_closed",
        "_getter",
        "_lanes",
        "_size",
        "_sweep_at",
        "_system",
        "_system_woken",
        "_turns",
        "_wait_order",
        "_waiting",
        "_woken",
        "capacity",
        "system_capacity",
    )

    def __init__(
        self,
        capacity: int,
        system_capacity: int,
        admit: Callable[[_T], bool] | None = None,
    ) -> None:
        if capacity < 1 or system_capacity < 1:
            raise ValueError("mailbox capacities must be at least 1")
        self.capacity = capacity
        self.system_capacity = system_capacity
        self._admit = admit
        # A lane per sender, kept while idle up to a point (see _forget_if_idle).
        self._lanes: dict[Hashable, _Lane[_T]] = {}
        # Keys of the lanes with items, in turn order; made on first use.
        self._turns: deque[Hashable] | None = None
        self._burst = 0  # items taken in a row from the lane at the head of the turns
        self._size = 0  # data items queued
        self._woken = 0  # room reserved for woken data senders and not taken yet
        # Room a waiting sender is woken with: wait until that much is free, so its burst
        # stays together in its lane. At most a quarter of the capacity, so a small mailbox
        # still wakes its senders early, one item each.
        self._burst_room = max(1, min(QUANTUM, capacity // 4))
        self._waiting: dict[Hashable, _Lane[_T]] | None = None  # lanes with waiting senders
        self._wait_order: deque[Hashable] | None = None  # their keys, in turn order
        self._sweep_at = _SWEEP_AT
        self._system: _Lane[_T] | None = None
        self._system_woken = 0
        self._getter: asyncio.Future[None] | None = None
        self._closed = False

    def __len__(self) -> int:
        return self._size + (self._system.n if self._system else 0)

    @property
    def closed(self) -> bool:
        return self._closed

    def lane_length(self, key: Hashable = None) -> int:
        """Data items queued from the sender ``key``."""
        lane = self._lanes.get(key)
        return lane.n if lane else 0

    def _data_lane(self, key: Hashable) -> _Lane[_T]:
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        return lane

    def _system_lane(self) -> _Lane[_T]:
        lane = self._system
        if lane is None:
            lane = self._system = _Lane()
        return lane

    def _append(self, lane: _Lane[_T], item: _T, key: Hashable) -> None:
        if key is not _SYSTEM:
            if not lane.n:
                if self._turns is None:
                    self._turns = deque()
                self._turns.append(key)
            self._size += 1
        lane.items.append(item)
        lane.n += 1
        getter = self._getter
        if getter is not None and not getter.done():
            getter.set_result(None)

    def offer(self, item: _T, system: bool, key: Hashable = None) -> bool:
        """Queue ``item`` if there is room (and nobody waits for it); never waits."""
        if self._closed:
            raise BusClosedError("the subscriber's queue is closed")
        if system:
            lane = self._system_lane()
            if lane.putters or self._system_woken or lane.n >= self.system_capacity:
                return False
            self._append(lane, item, _SYSTEM)
            return True
        if self._woken and self._take_grant(key):  # grants exist only while room is reserved
            self._append(self._lanes[key], item, key)
            return True
        if (
            self._waiting or self._size + self._woken >= self.capacity
        ) and not self._may_pass_held_back(item, key):
            return False
        self._append(self._data_lane(key), item, key)
        return True

    def _may_pass_held_back(self, item: _T, key: Hashable) -> bool:
        """The queue is full, or others wait, but the getter waits too: everything queued is
        held back (a worker at its job limits for a flooder). An item that may go now, from a
        sender with nothing queued, is let in past the capacity (one item per such sender)
        rather than wait behind items that cannot go."""
        getter = self._getter
        if getter is None or getter.done() or not self._size:
            return False
        lane = self._lanes.get(key)
        if lane is not None and lane.n:
            return False
        admit = self._admit
        return admit is None or admit(item)

    def _take_grant(self, key: Hashable) -> bool:
        lane = self._lanes.get(key)
        if lane is None or not lane.grant:
            return False
        lane.grant -= 1
        self._woken -= 1
        return True

    async def put(self, item: _T, system: bool, key: Hashable = None) -> None:
        """Queue ``item``, waiting for room. Cancelling gives up without queuing."""
        if system:
            await self._put_system(item)
            return
        if self._closed:
            raise BusClosedError("the subscriber's queue is closed")
        if (self._woken and self._take_grant(key)) or (
            not self._waiting and self._size + self._woken < self.capacity
        ):
            self._append(self._data_lane(key), item, key)
            return
        lane = self._data_lane(key)
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if lane.putters is None:
            lane.putters = deque()
        lane.putters.append(waiter)
        if self._waiting is None:
            self._waiting = {}
        if key not in self._waiting:
            self._waiting[key] = lane
            if self._wait_order is None:
                self._wait_order = deque()
            self._wait_order.append(key)
        getter = self._getter
        if getter is not None and not getter.done() and self._size:
            # The getter waits although the queue holds items: all are held back. Have it
            # look again, and let this sender in past the capacity if its item may go.
            getter.set_result(None)
        try:
            room = await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                if not self._closed:  # woken for room it will not take: pass it on
                    self._woken -= waiter.result()
                    self._wake_fairest()
            else:
                self._drop_putter(key, lane, waiter)
            raise
        if self._closed:
            raise BusClosedError("the subscriber's queue is closed")
        self._woken -= 1  # one item of the room reserved when this sender was woken
        # The lane may have been swept meanwhile (a woken sender leaves its putters).
        lane = self._data_lane(key)
        self._append(lane, item, key)
        if room > 1:
            # The rest of the burst is this sender's until the end of this turn of the loop.
            if not lane.grant:
                asyncio.get_running_loop().call_soon(self._end_grant, key, lane)
            lane.grant += room - 1

    def _end_grant(self, key: Hashable, lane: _Lane[_T]) -> None:
        """The turn of the loop is over: what the sender did not take goes back to the pool."""
        if self._closed or not lane.grant:
            return
        self._woken -= lane.grant
        lane.grant = 0
        if self._waiting:
            self._wake_fairest()

    async def _put_system(self, item: _T) -> None:
        while True:
            if self._closed:
                raise BusClosedError("the subscriber's queue is closed")
            lane = self._system_lane()
            if lane.n < self.system_capacity:
                self._append(lane, item, _SYSTEM)
                return
            waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            if lane.putters is None:
                lane.putters = deque()
            lane.putters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    if not self._closed:
                        self._system_woken -= 1
                        self._wake_system()
                elif lane.putters is not None and waiter in lane.putters:
                    lane.putters.remove(waiter)
                raise
            if not self._closed:
                self._system_woken -= 1

    def _drop_putter(self, key: Hashable, lane: _Lane[_T], waiter: asyncio.Future[int]) -> None:
        putters = lane.putters
        if putters is not None and waiter in putters:
            putters.remove(waiter)
        if not putters and self._waiting is not None and key in self._waiting:
            del self._waiting[key]
            if self._wait_order is not None:
                self._wait_order.remove(key)

    def take_nowait(self) -> _T | None:
        """The item :meth:`get` would return now, or ``None`` if it would wait."""
        system = self._system
        if system is not None and system.n:
            item = system.pop()
            self._wake_system()
            return item
        turns = self._turns
        admit = self._admit
        for _ in range(len(turns) if turns else 0):
            assert turns is not None
            key = turns[0]
            lane = self._lanes[key]
            if admit is not None and not admit(lane.first()):
                turns.rotate(-1)  # held back: the other senders go first
                self._burst = 0
                continue
            item = lane.pop()
            self._size -= 1
            self._burst += 1
            if not lane.n:
                turns.popleft()
                self._burst = 0
            elif self._burst >= QUANTUM:
                turns.rotate(-1)  # its next items wait for the other senders' turns
                self._burst = 0
            if self._waiting:
                self._wake_fairest()
            self._forget_if_idle()
            return item
        return None

    async def get(self) -> _T:
        """Take the next item: system lane first, then the data lanes in turn; wait while
        nothing is queued, or nothing queued may be admitted."""
        while True:
            item = self.take_nowait()
            if item is not None:
                return item
            if self._closed:
                raise BusClosedError("the subscriber's queue is closed")
            if self._size and self._waiting:
                # Full of items held back (a worker at its job limits): let in a sender whose
                # item may go now, past the capacity, rather than have it wait on the others.
                self._wake_fairest(past_capacity=True)
            getter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._getter = getter
            try:
                await getter
            finally:
                self._getter = None

    def readmit(self) -> None:
        """Ask a waiting ``get()`` to check again the items its ``admit`` held back."""
        getter = self._getter
        if getter is not None and not getter.done() and self._turns:
            getter.set_result(None)

    def _wake_fairest(self, past_capacity: bool = False) -> None:
        """Give the free room to waiting senders in turn, round-robin, a burst each once a
        burst is free (see the module documentation): a flooder gets no more of it than a
        sender that sends one message, and a batch from one socket stays together.

        ``past_capacity``: the queue holds only items ``admit`` holds back; wake one sender
        whose own lane is empty or may go, even though the queue is full. The queue then
        exceeds its capacity by at most one item per such sender.
        """
        waiting = self._waiting
        admit = self._admit
        # A deque of keys gives the turns: a dict popped at the front and refilled at the back
        # makes iter() skip ever more dead entries.
        burst = 1 if past_capacity else self._burst_room
        while waiting and (past_capacity or self._size + self._woken + burst <= self.capacity):
            order = self._wait_order
            assert order is not None
            if past_capacity:
                for key in order:
                    lane = waiting[key]
                    if not lane.n or admit is None or admit(lane.first()):
                        break
                else:
                    return
                order.remove(key)
            else:
                key = order.popleft()
            lane = waiting[key]
            putters = lane.putters
            while putters:
                waiter = putters.popleft()
                if not waiter.done():
                    waiter.set_result(burst)
                    self._woken += burst
                    break
            if putters:
                order.append(key)  # its next sender waits for the others' turns
            else:
                del waiting[key]
            if past_capacity:
                return

    def _wake_system(self) -> None:
        lane = self._system
        putters = lane.putters if lane is not None else None
        while putters:
            waiter = putters.popleft()
            if not waiter.done():
                waiter.set_result(1)
                self._system_woken += 1
                return

    def _forget_if_idle(self) -> None:
        # Idle lanes are kept (a sender that sent once usually sends again, and making a lane
        # per message would cost more than the message), until there are many: then the idle
        # ones are swept, in amortized constant time.
        lanes = self._lanes
        if len(lanes) > self._sweep_at:
            self._sweep_at = 2 * len(lanes)  # room for as many senders as were seen
            for k in [k for k, each in lanes.items() if each.idle()]:
                del lanes[k]

    def close(self) -> list[_T]:
        """Close the mailbox: waiting senders and the getter fail; returns what was queued."""
        self._closed = True
        system = self._system
        left: list[_T] = list(system.items[system.head :]) if system else []
        lanes = [lane for lane in (system, *self._lanes.values()) if lane is not None]
        for key in self._turns or ():
            lane = self._lanes[key]
            left.extend(lane.items[lane.head :])
        self._system = None
        self._lanes = {}
        self._turns = None
        self._waiting = None
        self._wait_order = None
        self._size = self._woken = self._system_woken = 0
        for lane in lanes:
            for waiter in lane.putters or ():
                if not waiter.done():
                    waiter.set_result(0)
            lane.putters = None
        if self._getter is not None and not self._getter.done():
            self._getter.set_result(None)
        return left


_SYSTEM = object()  # the key of the system lane in _append
