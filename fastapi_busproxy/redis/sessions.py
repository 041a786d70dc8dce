"""Which resumable sessions the instances of a durable Redis bus serve, kept in Redis.

A plugin route on a durable bus records each resumable session it serves
(``<prefix>:sess:<session id>``: the remote and local workers' names and the serving process),
refreshed with the bus's heartbeat and removed when the session ends (kept, to expire, when the
instance shuts down: a client may resume elsewhere). A session is taken over only from a
process that no longer beats; one that a live instance holds is refused for a while (1013),
and the client tries again. If its instance dies, the key outlives it by
``ttl`` seconds (the route's ``resume_grace`` and the heartbeat's ``ttl``): a client that
reconnects to another instance within that time names the session, the new instance finds it
here and takes it over (:meth:`WebSocketProxyServer.take_over`). The messages the client had
sent and not had acknowledged are sent again and dropped by the worker's stream reader if the
first instance had passed them on (their identity is ``(session, number)``); the messages for
the client wait in its worker's stream (see :mod:`.streams`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import orjson

from .errors import redis_errors
from .keys import KeyScheme
from .ledger import SESSION_SENDER

__all__ = ["SessionDirectory", "SessionRecord"]

logger = logging.getLogger("fastapi_busproxy.redis")

MAX_SESSIONS = 100_000
"""Sessions one process records at most (each is a live proxy; past this, not recorded)."""


class SessionDirectory:
    def __init__(self, keys: KeyScheme, process_id: str, heartbeat_ttl: float) -> None:
        self.keys = keys
        self.process_id = process_id
        self.heartbeat_ttl = heartbeat_ttl
        self.redis: Any = None
        self._ours: dict[str, tuple[bytes, int]] = {}  # session -> (its record, ttl in ms)

    def __len__(self) -> int:
        return len(self._ours)

    async def remember(
        self, session: str, remote_worker: str, local_worker: str, grace: float
    ) -> None:
        """Record that this process serves ``session`` (``remote_worker`` on the far side,
        talking to ``local_worker`` here); if the process dies, the record lasts ``grace``
        seconds more (after the heartbeat's ``ttl``)."""
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
        value = orjson.dumps([remote_worker, self.process_id, local_worker])
        self._ours[session] = (value, ttl_ms)
        try:
            await self.redis.set(self.keys.session(session), value, px=ttl_ms)
        except redis_errors() as exc:  # the next heartbeat writes it
            logger.warning("redis bus %s: session not recorded yet: %s", self.process_id, exc)

    async def forget(self, session: str, *, ended: bool = True) -> None:
        """Stop recording ``session`` here. ``ended``: it is over (its record and what the
        worker's stream remembers of it go, if the record is still ours); else (this instance
        shuts down) the record stays until it expires, for another instance to take over."""
        mine = self._ours.pop(session, None)
        if mine is None or not ended:
            return
        value = mine[0]
        local_worker = orjson.loads(value)[2]
        try:
            await self.redis.eval(
                _FORGET,
                2,
                self.keys.session(session),
                self.keys.delivered(local_worker),
                value,
                SESSION_SENDER + session,
            )
        except redis_errors() as exc:  # it expires
            logger.warning("redis bus %s: session not removed: %s", self.process_id, exc)

    async def lookup(self, session: str) -> SessionRecord | None:
        """The record of ``session`` if some instance keeps it and it has not expired."""
        if len(session) > 128:
            return None
        try:
            value = await self.redis.get(self.keys.session(session))
        except redis_errors() as exc:
            logger.warning("redis bus %s: cannot look a session up: %s", self.process_id, exc)
            return None
        if not value:
            return None
        try:
            parts = orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(parts, list) or len(parts) != 3:
            return None
        if not all(isinstance(part, str) for part in parts):
            return None
        return SessionRecord(*parts)

    async def is_alive(self, process: str) -> bool:
        """Whether ``process`` still beats (a live instance holds its sessions)."""
        if process == self.process_id:
            return True
        try:
            return bool(await self.redis.exists(self.keys.process(process)))
        except redis_errors():
            return True  # cannot tell: do not take a session that may be alive

    async def refresh(self) -> None:
        """Keep our sessions' records alive (the bus's heartbeat)."""
        if not self._ours:
            return
        pipe = self.redis.pipeline(transaction=False)
        for session, (value, ttl_ms) in self._ours.items():
            pipe.set(self.keys.session(session), value, px=ttl_ms)
        await pipe.execute()


@dataclass(frozen=True)
class SessionRecord:
    remote_worker: str
    owner: str  # the process id of the instance that serves (or served) it
    local_worker: str


# Delete a session's record if it is still ours (another instance may have taken it over),
# and what the local worker's stream remembers of the session.
_FORGET = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    redis.call('del', KEYS[1])
    redis.call('hdel', KEYS[2], ARGV[2])
end
return 0
"""
