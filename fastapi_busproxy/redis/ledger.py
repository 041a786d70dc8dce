"""What a durable reader has delivered to a target, per sender: pure, no I/O.

Each sender numbers the messages it adds to one target's stream, from 1 (see
:mod:`fastapi_busproxy.redis.keys`). The reader of that stream remembers, per sender, the last
number it delivered; the same record lives in Redis (``<prefix>:d:<target>``), so a process that
takes the worker over after another knows what was delivered before. A number not above the last
is a repeat (a redelivery, or a send retried after Redis took it) and is dropped; a number past
the next one means messages were lost between (trimmed from the stream unread, or Redis lost its
data), and says how many.

A sender that has written to more targets than it keeps counters for starts a new generation of
numbers (the high bits): its next message to a target it had forgotten starts over there, and is
neither a repeat nor a gap.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

__all__ = ["GENERATION", "SESSION_SENDER", "DeliveryLedger", "SendCounters", "Verdict"]

SESSION_SENDER = "s:"
"""A sender named ``s:<session>`` is a resumable link's session, numbered by the link: its numbers
run over every message of the session (some refused, some to other targets), so a skipped one
is no loss; only repeats count."""

GENERATION = 1 << 32
"""A sequence number is ``generation * GENERATION + n``, ``n`` counting from 1."""


class Verdict(NamedTuple):
    duplicate: bool
    lost: int  # messages from this sender that were never delivered, just before this one


_DELIVER = Verdict(False, 0)
_REPEAT = Verdict(True, 0)


class DeliveryLedger:
    """The last number delivered per sender, for one target; at most ``max_senders`` of them
    (the least recently heard is forgotten first)."""

    def __init__(self, max_senders: int = 16_384) -> None:
        self.max_senders = max_senders
        self._last: OrderedDict[str, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._last)

    def load(self, record: dict[str, int]) -> None:
        """Merge the record kept in Redis (what an earlier reader delivered)."""
        for sender, seq in record.items():
            if seq > self._last.get(sender, 0):
                self._remember(sender, seq)

    def check(self, sender: str, seq: int) -> Verdict:
        last = self._last.get(sender, 0)
        if seq <= last:
            return _REPEAT
        if sender.startswith(SESSION_SENDER):
            return _DELIVER
        if seq // GENERATION > last // GENERATION:  # a new generation (or a new sender)
            return Verdict(False, seq % GENERATION - 1)
        return _DELIVER if seq == last + 1 else Verdict(False, seq - last - 1)

    def delivered(self, sender: str, seq: int) -> None:
        self._remember(sender, seq)

    def _remember(self, sender: str, seq: int) -> None:
        last = self._last
        last[sender] = seq
        last.move_to_end(sender)
        if len(last) > self.max_senders:
            last.popitem(last=False)


class SendCounters:
    """A sender's numbers, per target; at most ``max_targets`` counters (past that, the least
    recently used is dropped and a new generation starts)."""

    def __init__(self, max_targets: int = 65536) -> None:
        self.max_targets = max_targets
        self._next: OrderedDict[str, int] = OrderedDict()
        self._generation = 0

    def next(self, target: str) -> int:
        counters = self._next
        seq = counters.get(target)
        if seq is None:
            seq = self._generation * GENERATION + 1
        counters[target] = seq + 1
        counters.move_to_end(target)
        if len(counters) > self.max_targets:
            counters.popitem(last=False)
            self._generation += 1
        return seq
