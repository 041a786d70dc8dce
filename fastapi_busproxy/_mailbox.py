"""A bounded queue with a lane per sender: system messages first, then senders in turn.

Data items are queued in a lane per *key* (the bus uses the sender's name), each lane FIFO and
holding at most ``capacity`` items; ``get()`` takes the lanes in turn (round-robin), so one
sender that floods a subscriber fills its own lane, and waits, while every other sender's items
keep being taken. System items have one lane of their own, bounded by ``system_capacity``,
taken before any data item.

``offer()`` never waits; ``put()`` waits for room in its lane. An optional ``admit(item)``
predicate holds an item back at the head of its lane while it returns ``False`` (a worker at its
limit of jobs in flight); the other lanes go on, and :meth:`Mailbox.readmit` asks ``get()`` to
look again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from .exceptions import BusClosedError

_T = TypeVar("_T")


class _Lane(Generic[_T]):
    """One sender's items, and the senders waiting for room in it (oldest first). A woken
    sender leaves ``putters`` and is counted in ``woken`` until it has run, so nobody
    overtakes it."""

    __slots__ = ("items", "putters", "woken")

    def __init__(self) -> None:
        self.items: deque[_T] = deque()
        self.putters: deque[asyncio.Future[None]] | None = None
        self.woken = 0

    def idle(self) -> bool:
        return not self.items and not self.putters and not self.woken


class Mailbox(Generic[_T]):
    __slots__ = (
        "_admit",
        "_closed",
        "_getter",
        "_lanes",
        "_size",
        "_system",
        "_turns",
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
        # Lanes exist while they hold or await items: a server holds a mailbox per connection.
        self._lanes: dict[Hashable, _Lane[_T]] = {}
        self._turns: deque[Hashable] = deque()  # keys of the lanes with items, in turn order
        self._size = 0
        self._system: _Lane[_T] | None = None
        self._getter: asyncio.Future[None] | None = None
        self._closed = False

    def __len__(self) -> int:
        return self._size + (len(self._system.items) if self._system else 0)

    @property
    def closed(self) -> bool:
        return self._closed

    def lane_length(self, key: Hashable = None) -> int:
        """Data items queued in the lane of ``key``."""
        lane = self._lanes.get(key)
        return len(lane.items) if lane else 0

    def _lane(self, system: bool, key: Hashable) -> _Lane[_T]:
        if system:
            if self._system is None:
                self._system = _Lane()
            return self._system
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        return lane

    def _append(self, lane: _Lane[_T], item: _T, system: bool, key: Hashable) -> None:
        if not system:
            if not lane.items:
                self._turns.append(key)
            self._size += 1
        lane.items.append(item)
        getter = self._getter
        if getter is not None and not getter.done():
            getter.set_result(None)

    def offer(self, item: _T, system: bool, key: Hashable = None) -> bool:
        """Queue ``item`` if its lane has room (and nobody waits before it); never waits."""
        if self._closed:
            raise BusClosedError("the subscriber's queue is closed")
        lane = self._lane(system, key)
        # Keep FIFO for senders that are already waiting on this lane.
        if lane.putters or lane.woken:
            return False
        if len(lane.items) >= (self.system_capacity if system else self.capacity):
            return False
        self._append(lane, item, system, key)
        return True

    async def put(self, item: _T, system: bool, key: Hashable = None) -> None:
        """Queue ``item``, waiting for room in its lane. Cancelling gives up without queuing."""
        limit = self.system_capacity if system else self.capacity
        while True:
            if self._closed:
                raise BusClosedError("the subscriber's queue is closed")
            lane = self._lane(system, key)
            if len(lane.items) < limit:
                self._append(lane, item, system, key)
                return
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if lane.putters is None:
                lane.putters = deque()
            lane.putters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._woken_ran(lane)
                elif lane.putters is not None:  # still queued (a cancelled or timed-out send)
                    with contextlib.suppress(ValueError):
                        lane.putters.remove(waiter)
                # Woken for room we will not use (cancelled, timed out): pass the wake-up on,
                # or the next sender waits although there is room.
                if not self._closed and len(lane.items) < limit:
                    self._wake_putter(lane)
                if not system:
                    self._forget_if_idle(key, lane)
                raise
            self._woken_ran(lane)

    async def get(self) -> _T:
        """Take the next item: system lane first, then the data lanes in turn; wait while
        nothing is queued, or nothing queued may be admitted."""
        while True:
            system = self._system
            if system is not None and system.items:
                item = system.items.popleft()
                self._wake_putter(system)
                return item
            turns = self._turns
            admit = self._admit
            for _ in range(len(turns)):
                key = turns[0]
                lane = self._lanes[key]
                item = lane.items[0]
                if admit is not None and not admit(item):
                    turns.rotate(-1)  # held back: the other senders go first
                    continue
                lane.items.popleft()
                turns.popleft()
                self._size -= 1
                if lane.items:
                    turns.append(key)  # its next item waits for the other senders' turns
                self._wake_putter(lane)
                self._forget_if_idle(key, lane)
                return item
            if self._closed:
                raise BusClosedError("the subscriber's queue is closed")
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

    def _wake_putter(self, lane: _Lane[_T]) -> None:
        waiters = lane.putters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                lane.woken += 1
                return

    def _woken_ran(self, lane: _Lane[_T]) -> None:
        if not self._closed:  # close() woke everyone and dropped the lanes
            lane.woken -= 1

    def _forget_if_idle(self, key: Hashable, lane: _Lane[_T]) -> None:
        if lane.idle() and self._lanes.get(key) is lane:
            del self._lanes[key]

    def close(self) -> list[_T]:
        """Close the mailbox: waiting senders and the getter fail; returns what was queued."""
        self._closed = True
        left: list[_T] = [*(self._system.items if self._system else ())]
        lanes = [lane for lane in (self._system, *self._lanes.values()) if lane is not None]
        for key in self._turns:
            left.extend(self._lanes[key].items)
        self._system = None
        self._lanes = {}
        self._turns.clear()
        self._size = 0
        for lane in lanes:
            for waiter in lane.putters or ():
                if not waiter.done():
                    waiter.set_result(None)
            lane.putters = None
        if self._getter is not None and not self._getter.done():
            self._getter.set_result(None)
        return left
