"""A flag that tasks wait on: :class:`asyncio.Event` without its up-front cost.

An ``asyncio.Event`` allocates its waiter deque when it is made (about 400 bytes), and a
server holds several per connection (a link's send signal and room signal, a worker's
"finished", a session's "done"). A :class:`Flag` makes a waiter's future only when a task
actually waits, so an idle connection costs a few dozen bytes per flag instead.
"""

from __future__ import annotations

import asyncio

__all__ = ["Flag"]


class Flag:
    """``set()``, ``clear()``, ``is_set()`` and ``await wait()``, as :class:`asyncio.Event`."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        """Set the flag and wake every waiter."""
        if self._set:
            return
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        """Return at once if the flag is set, else when it is set."""
        if self._set:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            waiters = self._waiters
            if waiters is not None and waiter in waiters:  # cancelled before set()
                waiters.remove(waiter)
