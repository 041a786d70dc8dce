"""A bounded two-lane queue: system messages are taken before data messages.

Each lane has its own capacity. ``offer()`` never waits; ``put()`` waits for room. ``get()``
takes the oldest system message if there is one, else the oldest data message, so system
messages overtake queued data messages while each lane stays FIFO.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Generic, TypeVar

from .exceptions import BusClosedError

_T = TypeVar("_T")


class Mailbox(Generic[_T]):
    __slots__ = (
        "_closed",
        "_data",
        "_data_putters",
        "_data_woken",
        "_getter",
        "_system",
        "_system_putters",
        "_system_woken",
        "capacity",
        "system_capacity",
    )

    def __init__(self, capacity: int, system_capacity: int) -> None:
        if capacity < 1 or system_capacity < 1:
            raise ValueError("mailbox capacities must be at least 1")
        self.capacity = capacity
        self.system_capacity = system_capacity
        self._data: deque[_T] = deque()
        # Made on first use: most subscribers never get a system message, and an empty deque
        # costs several hundred bytes (a server holds a mailbox per connection).
        self._system: deque[_T] | None = None
        self._getter: asyncio.Future[None] | None = None
        # Senders waiting for room in each lane, oldest first; made on first use. A woken
        # sender leaves its queue and is counted until it has run, so nobody overtakes it.
        self._data_putters: deque[asyncio.Future[None]] | None = None
        self._system_putters: deque[asyncio.Future[None]] | None = None
        self._data_woken = 0
        self._system_woken = 0
        self._closed = False

    def __len__(self) -> int:
        return len(self._data) + (len(self._system) if self._system else 0)

    def _lane(self, system: bool) -> deque[_T]:
        if not system:
            return self._data
        if self._system is None:
            self._system = deque()
        return self._system

    @property
    def closed(self) -> bool:
        return self._closed

    def offer(self, item: _T, system: bool) -> bool:
        """Queue ``item`` if its lane has room (and nobody waits before it); never waits."""
        if self._closed:
            raise BusClosedError("the subscriber's queue is closed")
        # Keep FIFO for senders that are already waiting on this lane.
        if system:
            if self._system_putters or self._system_woken:
                return False
        elif self._data_putters or self._data_woken:
            return False
        lane = self._lane(system)
        if len(lane) >= (self.system_capacity if system else self.capacity):
            return False
        lane.append(item)
        getter = self._getter
        if getter is not None and not getter.done():
            getter.set_result(None)
        return True

    async def put(self, item: _T, system: bool) -> None:
        """Queue ``item``, waiting for room in its lane. Cancelling gives up without queuing."""
        while True:
            lane = self._lane(system)
            limit = self.system_capacity if system else self.capacity
            if self._closed:
                raise BusClosedError("the subscriber's queue is closed")
            if len(lane) < limit:
                lane.append(item)
                getter = self._getter
                if getter is not None and not getter.done():
                    getter.set_result(None)
                return
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            waiters = self._putters_of(system)
            waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._woken_ran(system)
                else:  # still queued (rare: a cancelled or timed-out send)
                    with contextlib.suppress(ValueError):
                        waiters.remove(waiter)
                # Woken for room we will not use (cancelled, timed out): pass the wake-up on,
                # or the next sender waits although there is room.
                if not self._closed and len(lane) < limit:
                    self._wake_putter(system)
                raise
            self._woken_ran(system)

    async def get(self) -> _T:
        """Take the next item, system lane first; wait while both lanes are empty."""
        while True:
            if self._system:
                item = self._system.popleft()
                self._wake_putter(True)
                return item
            if self._data:
                item = self._data.popleft()
                self._wake_putter(False)
                return item
            if self._closed:
                raise BusClosedError("the subscriber's queue is closed")
            getter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._getter = getter
            try:
                await getter
            finally:
                self._getter = None

    def _putters_of(self, system: bool) -> deque[asyncio.Future[None]]:
        if system:
            if self._system_putters is None:
                self._system_putters = deque()
            return self._system_putters
        if self._data_putters is None:
            self._data_putters = deque()
        return self._data_putters

    def _wake_putter(self, system: bool) -> None:
        waiters = self._system_putters if system else self._data_putters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                if system:
                    self._system_woken += 1
                else:
                    self._data_woken += 1
                return

    def _woken_ran(self, system: bool) -> None:
        if self._closed:
            return  # close() woke everyone and reset the counts
        if system:
            self._system_woken -= 1
        else:
            self._data_woken -= 1

    def close(self) -> list[_T]:
        """Close the mailbox: waiting senders and the getter fail; returns what was queued."""
        self._closed = True
        left = [*(self._system or ()), *self._data]
        self._system = None
        self._data.clear()
        for waiters in (self._system_putters, self._data_putters):
            for waiter in waiters or ():
                if not waiter.done():
                    waiter.set_result(None)
        self._system_putters = self._data_putters = None
        if self._getter is not None and not self._getter.done():
            self._getter.set_result(None)
        return left
