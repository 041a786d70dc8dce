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
first instance had passed them on (their identity is ``(session, number)``).

The other way, what an instance sends the client is kept here before it is written
(``<prefix>:out:<session id>``, a stream whose entry ids are ``0-<number>``, trimmed as the
client acknowledges, with the record's lifetime): the instance that takes the session over
sends again, with the same numbers, what the client says it did not receive. A message for the
client from another process's worker is acknowledged in its worker's stream only once kept
here (see :mod:`.streams`); one that had not got here is still pending there, and claimed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from .errors import redis_errors, retry_while_away
from .keys import GROUP, KeyScheme
from .ledger import SESSION_SENDER, record_value

if TYPE_CHECKING:
    from .._receipt import Receipt
    from ..proxy.resume import SessionState

__all__ = ["SessionDirectory", "SessionRecord"]

logger = logging.getLogger("fastapi_busproxy.redis")

MAX_SESSIONS = 100_000
"""Sessions one process records at most (each is a live proxy; past this, not recorded)."""


class SessionDirectory:
    def __init__(
        self, keys: KeyScheme, process_id: str, heartbeat_ttl: float, write_timeout: float
    ) -> None:
        self.keys = keys
        self.process_id = process_id
        self.heartbeat_ttl = heartbeat_ttl
        self.write_timeout = write_timeout
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
                3,
                self.keys.session(session),
                self.keys.delivered(local_worker),
                self.keys.sent(session),
                value,
                SESSION_SENDER + session,
            )
        except redis_errors() as exc:  # it expires
            logger.warning("redis bus %s: session not removed: %s", self.process_id, exc)

    async def keep_sent(
        self, state: SessionState, entries: list[tuple[int, bytes]], receipts: list[Receipt]
    ) -> None:
        """Keep ``entries``, what ``state`` numbered and has not kept yet (a link calls this
        before it writes any of them), and forget what the client acknowledged; in the same
        transaction, acknowledge in their streams those of ``receipts`` that came from one
        (so that an instance taking over replays them from here, and does not claim them
        there too). Retried while Redis is away, up to ``write_timeout`` seconds.

        Raises:
            BusUnavailableError: Redis did not take it in time (the link closes; the
                session's client resumes, and it is kept then).
        """
        session = state.session
        assert session is not None
        acknowledged = state.peer_acked
        key = self.keys.sent(session)
        ours = self._ours.get(session)
        ttl_ms = ours[1] if ours is not None else int(self.heartbeat_ttl * 1000)
        acks: dict[str, list[bytes]] = {}
        numbers: dict[str, dict[str, int]] = {}
        for receipt in receipts:
            if receipt.entry is not None:
                target, entry_id, sender, number = receipt.entry
                acks.setdefault(target, []).append(entry_id)
                numbers.setdefault(target, {})[sender] = number  # in order: the last is highest

        async def attempt() -> None:
            pipe = self.redis.pipeline(transaction=True)
            for seq, payload in entries:
                pipe.xadd(key, {"p": payload}, id=f"0-{seq}")
            now_ms = int(time.time() * 1000)
            for target, ids in acks.items():
                pipe.xack(self.keys.stream(target), GROUP, *ids)
                mapping = {s: record_value(n, now_ms) for s, n in numbers[target].items()}
                pipe.hset(self.keys.delivered(target), mapping=mapping)
            if acknowledged:
                pipe.xtrim(key, minid=f"0-{acknowledged + 1}")
            pipe.pexpire(key, ttl_ms)
            for result in await pipe.execute(raise_on_error=False):
                # An entry a try whose answer was lost had added is there: fine.
                if isinstance(result, Exception) and "equal or smaller" not in str(result):
                    raise result

        def refusal(exc: BaseException) -> str:
            return (
                f"Redis did not keep what session {session} sends for {self.write_timeout}s"
                f" ({exc})"
            )

        await retry_while_away(attempt, self.write_timeout, refusal)

    async def sent_after(self, session: str, after: int) -> list[tuple[int, bytes]]:
        """What ``session`` sent after number ``after`` and kept (see :meth:`keep_sent`), in
        order; empty if Redis cannot say."""
        try:
            entries = await self.redis.xrange(self.keys.sent(session), min=f"0-{after + 1}")
        except redis_errors() as exc:
            logger.warning(
                "redis bus %s: cannot read what a session sent: %s", self.process_id, exc
            )
            return []
        found = []
        for entry_id, fields in entries:
            raw = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            payload = fields.get(b"p")
            if payload is not None:
                found.append((int(raw.partition("-")[2]), payload))
        return found

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
            pipe.pexpire(self.keys.sent(session), ttl_ms)
        await pipe.execute()


@dataclass(frozen=True)
class SessionRecord:
    remote_worker: str
    owner: str  # the process id of the instance that serves (or served) it
    local_worker: str


# Delete a session's record if it is still ours (another instance may have taken it over),
# what the local worker's stream remembers of the session, and what it sent.
_FORGET = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    redis.call('del', KEYS[1])
    redis.call('hdel', KEYS[2], ARGV[2])
    redis.call('del', KEYS[3])
end
return 0
"""
