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
        "_getter",
        "_putters",
        "_system",
        "capacity",
        "system_capacity",
    )

    def __init__(self, capacity: int, system_capacity: int) -> None:
        if capacity < 1 or system_capacity < 1:
            raise ValueError("mailbox capacities must be at least 1")
        self.capacity = capacity
        self.system_capacity = system_capacity
        self._data: deque[_T] = deque()
        self._system: deque[_T] = deque()
        self._getter: asyncio.Future[None] | None = None
        # Senders waiting for room, oldest first, with the lane they wait on.
        self._putters: deque[tuple[bool, asyncio.Future[None]]] = deque()
        self._closed = False

    def __len__(self) -> int:
        return len(self._data) + len(self._system)

    @property
    def closed(self) -> bool:
        return self._closed

    def offer(self, item: _T, system: bool) -> bool:
        """Queue ``item`` if its lane has room (and nobody waits before it); never waits."""
        if self._closed:
            raise BusClosedError("the subscriber's queue is closed")
        # Keep FIFO for senders that are already waiting on this lane.
        if self._putters and any(lane is system for lane, _ in self._putters):
            return False
        lane = self._system if system else self._data
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
            lane = self._system if system else self._data
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
            entry = (system, waiter)
            self._putters.append(entry)
            try:
                await waiter
            except BaseException:
                with contextlib.suppress(ValueError):
                    self._putters.remove(entry)
                # Woken for room we will not use (cancelled, timed out): pass the wake-up on,
                # or the next sender waits although there is room.
                if not self._closed and len(lane) < limit:
                    self._wake_putter(system)
                raise
            with contextlib.suppress(ValueError):
                self._putters.remove(entry)

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

    def _wake_putter(self, system: bool) -> None:
        for lane, waiter in self._putters:
            if lane is system and not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> list[_T]:
        """Close the mailbox: waiting senders and the getter fail; returns what was queued."""
        self._closed = True
        left = [*self._system, *self._data]
        self._system.clear()
        self._data.clear()
        for _, waiter in self._putters:
            if not waiter.done():
                waiter.set_result(None)
        if self._getter is not None and not self._getter.done():
            self._getter.set_result(None)
        return left
