"""When the client proxy reconnects, and how long it waits: a pure policy."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..exceptions import ConfigurationError

__all__ = ["ReconnectPolicy"]

_MAX_EXPONENT = 100  # 100 ** 100 is still a finite float

# Handshake statuses that no retry will fix: the credentials are wrong.
_FATAL_STATUSES = frozenset((401, 403))

# Closes by the server that refuse the client rather than end a connection that served:
# policy violation, a duplicate session, a session replaced by a newer connection.
_REFUSALS = frozenset((1008, 4001, 4002))


@dataclass(frozen=True)
class ReconnectPolicy:
    """Exponential backoff with jitter.

    The n-th consecutive failed attempt (n >= 1) waits ``min(max_delay, initial_delay *
    multiplier ** (n - 1))`` seconds, of which the last ``jitter`` fraction is random, so that
    many clients cut off together do not come back in step.

    Args:
        initial_delay: wait after the first failure, in seconds.
        max_delay: the longest wait.
        multiplier: growth per attempt.
        jitter: fraction of each wait that is random (0: none; 1: "full jitter").
        max_attempts: consecutive failed attempts before giving up (``None``: never give up).
    """

    initial_delay: float = 0.5
    max_delay: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.5
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        numbers = (self.initial_delay, self.max_delay, self.multiplier, self.jitter)
        if not all(math.isfinite(number) for number in numbers):
            raise ConfigurationError("reconnect delays, multiplier and jitter must be finite")
        if self.initial_delay < 0 or self.max_delay < self.initial_delay:
            raise ConfigurationError("need 0 <= initial_delay <= max_delay")
        if not 1 <= self.multiplier <= 100:
            raise ConfigurationError("multiplier must be between 1 and 100")
        if not 0 <= self.jitter <= 1:
            raise ConfigurationError("jitter must be between 0 and 1")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ConfigurationError("max_attempts must be >= 1, or None to retry forever")

    def delay(self, attempt: int, rand: float) -> float:
        """Seconds to wait after the ``attempt``-th consecutive failure; ``rand`` in [0, 1)."""
        # The exponent is capped so that a client retrying for days does not overflow.
        exponent = min(max(0, attempt - 1), _MAX_EXPONENT)
        base = min(self.max_delay, self.initial_delay * self.multiplier**exponent)
        return base * (1.0 - self.jitter) + base * self.jitter * rand

    def should_retry(self, attempt: int) -> bool:
        """``False`` once ``attempt`` consecutive failures reach ``max_attempts``."""
        return self.max_attempts is None or attempt < self.max_attempts

    @staticmethod
    def next_attempt(previous: int, *, code: int, served: bool) -> int:
        """The attempt number to wait for after the server closed a connection with
        ``code``. A refusal (1008, 4001, 4002), or a connection that carried nothing from the
        server (``served`` false), is one more failed attempt: the backoff grows, and
        ``max_attempts`` counts it. A connection that served starts the count over."""
        if code in _REFUSALS or not served:
            return previous + 1
        return 1

    @staticmethod
    def is_fatal_status(status_code: int) -> bool:
        """A handshake refused with this HTTP status is not retried (401, 403)."""
        return status_code in _FATAL_STATUSES
