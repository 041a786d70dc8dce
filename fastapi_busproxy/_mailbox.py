"""A bounded queue with a lane per sender: system messages first, then senders in turn.

Data items are queued in a lane per *key* (the bus uses the sender's name), each lane FIFO and
holding at most ``capacity`` items; ``get()`` takes the lanes in turn (round-robin), so one
sender that floods a subscriber fills its own lane, and waits, while every other sender's items
keep being taken (up to :data:`QUANTUM` items a turn). System items have one lane of their
own, bounded by ``system_capacity``, taken before any data item.

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

_SWEEP_AT = 64  # lanes a mailbox keeps, idle or not, before it sweeps the idle ones

QUANTUM = 16
"""Items taken in a row from one sender's lane before the next sender's turn. More than one,
so that a burst from one link (a batch from its socket) is handled, and answered, together:
its answers then leave in one batch too. A flooder delays another sender by at most this."""


class _Lane(Generic[_T]):
    """One sender's items (a list read from ``head``: lanes come and go with traffic, and a
    list costs a tenth of a deque to make), and the senders waiting for room in it (oldest
    first). A woken sender leaves ``putters`` and is counted in ``woken`` until it has run,
    so nobody overtakes it."""

    __slots__ = ("head", "items", "n", "putters", "woken")

    def __init__(self) -> None:
        self.items: list[_T] = []
        self.head = 0
        self.n = 0  # items not yet read
        self.putters: deque[asyncio.Future[None]] | None = None
        self.woken = 0

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
        return not self.n and not self.putters and not self.woken


class Mailbox(Generic[_T]):
    __slots__ = (
        "_admit",
        "_burst",
        "_closed",
        "_getter",
        "_lanes",
        "_size",
        "_sweep_at",
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
        # A lane per sender, kept while idle up to a point (see _forget_if_idle).
        self._lanes: dict[Hashable, _Lane[_T]] = {}
        # Keys of the lanes with items, in turn order; made on first use.
        self._turns: deque[Hashable] | None = None
        self._size = 0
        self._burst = 0  # items taken in a row from the lane at the head of the turns
        self._sweep_at = _SWEEP_AT
        self._system: _Lane[_T] | None = None
        self._getter: asyncio.Future[None] | None = None
        self._closed = False

    def __len__(self) -> int:
        return self._size + (self._system.n if self._system else 0)

    @property
    def closed(self) -> bool:
        return self._closed

    def lane_length(self, key: Hashable = None) -> int:
        """Data items queued in the lane of ``key``."""
        lane = self._lanes.get(key)
        return lane.n if lane else 0

    def _lane(self, system: bool, key: Hashable) -> _Lane[_T]:
        if system:
            lane = self._system
            if lane is None:
                lane = self._system = _Lane()
            return lane
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        return lane

    def _append(self, lane: _Lane[_T], item: _T, system: bool, key: Hashable) -> None:
        if not system:
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
        """Queue ``item`` if its lane has room (and nobody waits before it); never waits."""
        if self._closed:
            raise BusClosedError("the subscriber's queue is closed")
        lane = self._lane(system, key)
        # Keep FIFO for senders that are already waiting on this lane.
        if lane.putters or lane.woken:
            return False
        if lane.n >= (self.system_capacity if system else self.capacity):
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
            if lane.n < limit:
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
                if not self._closed and lane.n < limit:
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
            if system is not None and system.n:
                item = system.pop()
                self._wake_putter(system)
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
        self._size = 0
        for lane in lanes:
            for waiter in lane.putters or ():
                if not waiter.done():
                    waiter.set_result(None)
            lane.putters = None
        if self._getter is not None and not self._getter.done():
            self._getter.set_result(None)
        return left
