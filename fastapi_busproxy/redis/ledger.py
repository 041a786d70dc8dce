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
neither a repeat nor a gap. So does a sender that has not written to a target for longer than a
stream keeps its entries: the target's record may have forgotten it by then (a field of the
record not written for ``2 * stream_max_age`` is dropped, see :func:`parse_record`), and it is
then a new sender there, not one with a gap.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

__all__ = [
    "GENERATION",
    "SESSION_SENDER",
    "DeliveryLedger",
    "SendCounters",
    "Verdict",
    "parse_record",
    "record_value",
]

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


def record_value(seq: int, now_ms: int) -> str:
    """A field's value in a target's record: the last number delivered, and when written."""
    return f"{seq}:{now_ms}"


def parse_record(
    record: dict[bytes, bytes], now_ms: int, keep_ms: int
) -> tuple[dict[str, int], list[bytes]]:
    """A target's record read from Redis: the last number per sender, and the fields not
    written for ``keep_ms`` (to drop: none of their sender's entries can be left in the
    stream, and the sender numbers afresh after so long). A value without a time is kept."""
    last: dict[str, int] = {}
    stale: list[bytes] = []
    for field, value in record.items():
        seq, _, written = value.partition(b":")
        try:
            number = int(seq)
            at = int(written) if written else None
        except ValueError:
            stale.append(field)  # not ours: nothing to learn from it
            continue
        if at is not None and now_ms - at > keep_ms:
            stale.append(field)
        else:
            last[field.decode(errors="replace")] = number
    return last, stale


class SendCounters:
    """A sender's numbers, per target; at most ``max_targets`` counters (past that, the least
    recently used is dropped and a new generation starts). A counter not used for
    ``idle_after`` seconds starts a new generation too (see the module)."""

    def __init__(self, max_targets: int = 65536, idle_after: float | None = None) -> None:
        self.max_targets = max_targets
        self.idle_after = idle_after
        self._next: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._generation = 0

    def next(self, target: str, now: float = 0.0) -> int:
        counters = self._next
        entry = counters.get(target)
        if entry is None:
            seq = self._generation * GENERATION + 1
        elif self.idle_after is not None and now - entry[1] > self.idle_after:
            self._generation += 1  # above every generation used: afresh for this target
            seq = self._generation * GENERATION + 1
        else:
            seq = entry[0]
        counters[target] = (seq + 1, now)
        counters.move_to_end(target)
        if len(counters) > self.max_targets:
            counters.popitem(last=False)
            self._generation += 1
        return seq
