"""Which resumable sessions the instances of a durable Redis bus serve, kept in Redis.

A plugin route on a durable bus records each resumable session it serves
(``<prefix>:sess:<session id>`` = the remote worker's name), refreshed with the bus's
heartbeat and removed when the session ends. If its instance dies, the key outlives it by
``ttl`` seconds (the route's ``resume_grace`` and the heartbeat's ``ttl``): a client that
reconnects to another instance within that time names the session, the new instance finds it
here and takes it over (:meth:`WebSocketProxyServer.take_over`). The messages the client had
sent and not had acknowledged are sent again and dropped by the worker's stream reader if the
first instance had passed them on (their identity is ``(session, number)``); the messages for
the client wait in its worker's stream (see :mod:`.streams`).
"""

from __future__ import annotations

import logging
from typing import Any

from .errors import redis_errors
from .keys import KeyScheme

__all__ = ["SessionDirectory"]

logger = logging.getLogger("fastapi_busproxy.redis")

MAX_SESSIONS = 100_000
"""Sessions one process records at most (each is a live proxy; past this, not recorded)."""


class SessionDirectory:
    def __init__(self, keys: KeyScheme, process_id: str, heartbeat_ttl: float) -> None:
        self.keys = keys
        self.process_id = process_id
        self.heartbeat_ttl = heartbeat_ttl
        self.redis: Any = None
        self._ours: dict[str, tuple[str, int]] = {}  # session -> (remote worker, ttl in ms)

    def __len__(self) -> int:
        return len(self._ours)

    async def remember(self, session: str, remote_worker: str, grace: float) -> None:
        """Record that this process serves ``session`` for ``remote_worker``; if the process
        dies, the record lasts ``grace`` seconds more (after the heartbeat's ``ttl``)."""
        if len(self._ours) >= MAX_SESSIONS:
            logger.warning(
                "redis bus %s: %d sessions recorded; %s is not (it cannot move to another"
                " instance)",
                self.process_id,
                MAX_SESSIONS,
                remote_worker,
            )
            return
        ttl_ms = max(1, int((grace + self.heartbeat_ttl) * 1000))
        self._ours[session] = (remote_worker, ttl_ms)
        try:
            await self.redis.set(self.keys.session(session), remote_worker, px=ttl_ms)
        except redis_errors() as exc:  # the next heartbeat writes it
            logger.warning("redis bus %s: session not recorded yet: %s", self.process_id, exc)

    async def forget(self, session: str) -> None:
        """The session ended here: it cannot be taken over."""
        if self._ours.pop(session, None) is None:
            return
        try:
            await self.redis.delete(self.keys.session(session))
        except redis_errors() as exc:  # it expires
            logger.warning("redis bus %s: session not removed: %s", self.process_id, exc)

    async def remote_worker_of(self, session: str) -> str | None:
        """The remote worker of ``session`` if some instance recorded it and it has not
        expired, else ``None``."""
        if len(session) > 128:
            return None
        try:
            value = await self.redis.get(self.keys.session(session))
        except redis_errors() as exc:
            logger.warning("redis bus %s: cannot look a session up: %s", self.process_id, exc)
            return None
        return value.decode() if isinstance(value, bytes) else None

    async def refresh(self) -> None:
        """Keep our sessions' records alive (the bus's heartbeat)."""
        if not self._ours:
            return
        pipe = self.redis.pipeline(transaction=False)
        for session, (remote_worker, ttl_ms) in self._ours.items():
            pipe.set(self.keys.session(session), remote_worker, px=ttl_ms)
        await pipe.execute()
