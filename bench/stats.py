"""Small statistics: percentiles of samples, and median/min/max over rounds."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``samples``, nearest-rank; NaN when empty."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of the finite values (NaN when there are none)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return {"median": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    return {
        "median": statistics.median(finite),
        "min": min(finite),
        "max": max(finite),
        "n": len(finite),
    }


class OrderCheck:
    """Counts replies that come back out of order, and (at the end) those that never came.

    A reply is reordered when a later one arrived before it; a gap alone is counted as lost.
    """

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.received = 0
        self.reordered = 0
        self.duplicated = 0
        self._highest = -1
        self._seen: set[int] = set()

    def see(self, seq: int) -> bool:
        """Record a reply; ``False`` if it is a duplicate."""
        if seq in self._seen:
            self.duplicated += 1
            return False
        self._seen.add(seq)
        self.received += 1
        if seq < self._highest:
            self.reordered += 1
        else:
            self._highest = seq
        return True

    @property
    def done(self) -> bool:
        return self.received >= self.expected

    @property
    def lost(self) -> int:
        return self.expected - self.received
