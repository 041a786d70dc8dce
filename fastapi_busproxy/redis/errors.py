"""Which exceptions mean that Redis could not be reached (imported late: redis is optional)."""

from __future__ import annotations


def redis_errors() -> tuple[type[BaseException], ...]:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return (RedisConnectionError, RedisTimeoutError, OSError, ConnectionError)
