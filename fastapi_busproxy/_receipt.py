"""A receipt: word that every local subscriber that took a message has finished with it.

A bus that must know when a message has been handled, not only queued, attaches a
:class:`Receipt` to it before delivering (durable delivery on Redis acknowledges a stream entry
then, so that what a killed process had queued and not handled is delivered again). The
deliverer holds the receipt while it delivers; each subscriber that queues the message holds it
too, and lets go once its handler has returned or raised, or a proxy has taken the message to
write. The last to let go calls ``done``.

A subscriber that never finishes the message (its handler cancelled, its queue closed with the
message still in it) never lets go, and one that discards it unhandled (a worker that is
ending) voids the receipt: either way ``done`` is never called, since the message was not
handled.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .messages import BusMessage

__all__ = ["Receipt", "attach_receipt"]


class Receipt:
    """Counts the holders of one delivery; calls ``done()`` when the last lets go."""

    __slots__ = ("_done", "_holders", "entry")

    def __init__(
        self, done: Callable[[], None], entry: tuple[str, bytes, str, int] | None = None
    ) -> None:
        self._done = done
        self._holders = 1  # the deliverer, until it has handed the message to everyone
        self.entry = entry
        """Where the message came from, for a holder that can acknowledge it itself, in one
        step with what it does (a durable session keeping what it sends): its target's stream
        entry and its sender's number there, ``(target, entry id, sender, number)``."""

    def hold(self) -> None:
        self._holders += 1

    def release(self) -> None:
        self._holders -= 1
        if self._holders == 0:
            self._done()

    def void(self) -> None:
        """The message was discarded unhandled: ``done`` is never to be called."""
        self._done = _unhandled


def _unhandled() -> None:
    pass


def attach_receipt(message: BusMessage, receipt: Receipt) -> None:
    """Have the bus's subscribers report on ``message`` to ``receipt``."""
    object.__setattr__(message, "receipt", receipt)
