"""Which exceptions mean that Redis could not be reached or refused a command (imported late:
redis is optional). A refusal (out of memory under ``noeviction``, a failed transaction) is
treated as an outage: retried within the caller's bound, then reported."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from ..exceptions import BusUnavailableError


def redis_errors() -> tuple[type[BaseException], ...]:
    from redis.exceptions import RedisError

    return (RedisError, OSError, ConnectionError)


async def retry_while_away(
    attempt: Callable[[], Awaitable[None]],
    timeout: float,
    refusal: Callable[[BaseException], str],
) -> None:
    """Run ``attempt`` until Redis takes it, trying again with backoff for up to ``timeout``
    seconds.

    Raises:
        BusUnavailableError: ``refusal(last error)``, once ``timeout`` has passed.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    tries = 0
    while True:
        try:
            await attempt()
            return
        except redis_errors() as exc:
            tries += 1
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise BusUnavailableError(refusal(exc)) from exc
            await asyncio.sleep(min(remaining, 0.05 * 2 ** min(tries, 6)))
