"""The bounded queue of messages waiting to cross a link.

While a link is up, a full outbox makes the sender wait (backpressure) up to a limit. While the
client is disconnected, the outbox keeps the newest ``max_size`` messages no older than
``max_age`` seconds, dropping the oldest (counted). The link's writer peeks, sends, then pops,
so a batch whose write failed is sent again on the next connection.

While the link is up, the outbox holds only what must wait (behind a full send window, or
behind what was held): what the proxy forwards otherwise goes from its mailbox to the socket.

A message with a receipt (:mod:`fastapi_busproxy._receipt`) is held while queued here; popping
it lets go (the link has it then). One dropped or expired is never let go: it was not sent.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from .._flag import Flag
from ..exceptions import ConfigurationError
from ..messages import BusMessage


class Outbox:
    __slots__ = ("_items", "_room", "expired", "max_age", "max_size", "overflowed", "wake")

    def __init__(self, max_size: int, max_age: float | None = None) -> None:
        if max_size < 1:
            raise ConfigurationError(f"a send queue holds at least 1 message, not {max_size}")
        if max_age is not None and not max_age > 0:
            raise ConfigurationError(f"outbox_max_age must be > 0 seconds or None, not {max_age}")
        self.max_size = max_size
        self.max_age = max_age
        # Made on first put and dropped when emptied: an idle link holds no deque block.
        self._items: deque[tuple[float, BusMessage]] | None = None
        self.wake: Callable[[], None] | None = None
        """Called on every put: the running link's ``kick`` (its writer sends what came)."""
        self._room = Flag()
        self._room.set()
        self.overflowed = 0  # dropped because the outbox was full while disconnected
        self.expired = 0  # dropped because they waited longer than max_age

    def __len__(self) -> int:
        items = self._items
        return len(items) if items else 0

    @property
    def full(self) -> bool:
        return len(self) >= self.max_size

    def _queue(self) -> deque[tuple[float, BusMessage]]:
        items = self._items
        if items is None:
            items = self._items = deque()
        return items

    def put_nowait(self, message: BusMessage) -> bool:
        """Queue ``message`` if there is room; ``False`` if full."""
        if len(self) >= self.max_size:
            self._room.clear()
            return False
        self._queue().append((time.monotonic(), message))
        if message.receipt is not None:
            message.receipt.hold()
        if self.wake is not None:
            self.wake()
        return True

    def put_dropping_oldest(self, message: BusMessage) -> int:
        """Queue ``message``, dropping the oldest ones if full; returns how many were dropped."""
        items = self._queue()
        dropped = 0
        while len(items) >= self.max_size:
            items.popleft()
            dropped += 1
        self.overflowed += dropped
        items.append((time.monotonic(), message))
        if message.receipt is not None:
            message.receipt.hold()
        if self.wake is not None:
            self.wake()
        return dropped

    async def wait_for_room(self) -> None:
        while len(self) >= self.max_size:
            self._room.clear()
            await self._room.wait()

    def expire(self) -> int:
        """Drop messages older than ``max_age``; returns how many."""
        items = self._items
        if self.max_age is None or not items:
            return 0
        limit = time.monotonic() - self.max_age
        dropped = 0
        while items and items[0][0] < limit:
            items.popleft()
            dropped += 1
        if not items:
            self._items = None
        self.expired += dropped
        if dropped:
            self._room.set()
        return dropped

    def peek(self, count: int) -> list[BusMessage]:
        items = self._items
        if not items:
            return []
        if count == 1 or len(items) == 1:
            return [items[0][1]]
        return [items[i][1] for i in range(min(count, len(items)))]

    def pop(self, count: int) -> None:
        items = self._items
        if not items:
            return
        for _ in range(min(count, len(items))):
            receipt = items.popleft()[1].receipt
            if receipt is not None:
                receipt.release()  # the link has it now (written, or in the session's replay)
        if not items:
            self._items = None
        if len(items) < self.max_size:
            self._room.set()

    def clear(self) -> int:
        count = len(self)
        self._items = None
        self._room.set()
        return count
