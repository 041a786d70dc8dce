"""Which exceptions mean that Redis could not be reached or refused a command (imported late:
redis is optional). A refusal (out of memory under ``noeviction``, a failed transaction) is
treated as an outage: retried within the caller's bound, then reported."""

from __future__ import annotations


def redis_errors() -> tuple[type[BaseException], ...]:
    from redis.exceptions import RedisError

    return (RedisError, OSError, ConnectionError)
