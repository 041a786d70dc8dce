"""What a resumable session remembers across connections: sequence numbers and the replay.

A :class:`SessionState` belongs to one side of one session (the client proxy, or the server
proxy that the plugin keeps through a disconnection) and outlives each connection's
:class:`~.protocol.LinkProtocol`. Pure code, no I/O:

- **outbound**, every message that crosses gets the next sequence number and stays, serialized,
  in the replay buffer until the peer acknowledges it (cumulatively). The buffer is bounded in
  bytes: while it holds ``limit`` bytes or more, the link sends nothing new (:attr:`window_open`
  is false), its send queue fills and senders wait: the bus's backpressure. Nothing is dropped.
- **inbound**, :attr:`delivered` is the highest of the peer's sequence numbers this side has
  delivered (or refused: refusing consumes it too); it is what this side acknowledges, and what
  it tells the peer when a connection opens, so that the peer replays the rest.
- **resuming** (:meth:`resume`) drops what the peer says it has delivered and hands back the
  rest for replay; a count that does not fit what was sent means the session cannot resume.
- **persisting**: a link that keeps the replay elsewhere too (a durable Redis bus, so that
  another instance can take the session over) writes :meth:`unpersisted` there before it
  writes to the socket, then calls :meth:`persisted_upto`. Receipts of the messages numbered
  (:mod:`fastapi_busproxy._receipt`) are held until then: what reached the replay's keeper is
  handled, for the bus.
- **taking over** (:meth:`take_over`) a session another instance served until it died: the
  numbers go on from what the peer says it received and was acknowledged, after what the other
  instance had sent and kept elsewhere, which is replayed.
- **losing** the session (:meth:`lose`) counts what the peer never acknowledged and starts the
  numbering over.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

from ..exceptions import ConfigurationError

if TYPE_CHECKING:
    from .._receipt import Receipt

__all__ = ["DEFAULT_REPLAY_BUFFER", "MIN_REPLAY_BUFFER", "Persist", "SessionState"]

DEFAULT_REPLAY_BUFFER = 1_048_576
MIN_REPLAY_BUFFER = 65_536


class SessionState:
    __slots__ = (
        "_receipts",
        "_replay",
        "delivered",
        "limit",
        "next_seq",
        "peer_acked",
        "peer_window",
        "persisted",
        "replay_bytes",
        "session",
    )

    def __init__(self, limit: int = DEFAULT_REPLAY_BUFFER) -> None:
        if limit < MIN_REPLAY_BUFFER:
            raise ConfigurationError(
                f"replay_buffer_size must be at least {MIN_REPLAY_BUFFER} bytes, not {limit}"
            )
        self.limit = limit
        # What the peer said it takes unacknowledged (its receive window); None: not said.
        self.peer_window: int | None = None
        self.session: str | None = None
        self.next_seq = 1  # our next message's sequence number
        self.peer_acked = 0  # the highest of ours the peer acknowledged
        self.delivered = 0  # the highest of the peer's we delivered
        # Made on first use and dropped when empty: an idle session holds no deque block.
        self._replay: deque[tuple[int, bytes]] | None = None
        self.replay_bytes = 0
        self.persisted = 0  # the highest of ours kept elsewhere too (see persisted_upto)
        # Receipts of the messages numbered and not persisted, with their batch's last number.
        self._receipts: deque[tuple[int, Receipt]] | None = None

    @property
    def sent(self) -> int:
        """The highest sequence number sent (0 before the first)."""
        return self.next_seq - 1

    @property
    def unacknowledged(self) -> int:
        """Messages sent that the peer has not acknowledged."""
        replay = self._replay
        return len(replay) if replay else 0

    @property
    def window_open(self) -> bool:
        """Room to send more: the replay buffer holds less than its limit, and less than the
        peer's receive window."""
        peer = self.peer_window
        limit = self.limit if peer is None or peer > self.limit else peer
        return self.replay_bytes < limit

    def record(self, payloads: list[bytes], receipts: Iterable[Receipt] = ()) -> int:
        """Number ``payloads`` (about to be written) and keep them; returns the first number.
        ``receipts``, of the messages they are, are held until they are persisted."""
        last = self.next_seq + len(payloads) - 1
        for receipt in receipts:
            receipt.hold()
            if self._receipts is None:
                self._receipts = deque()
            self._receipts.append((last, receipt))
        first = self.next_seq
        seq = first
        replay = self._replay
        if replay is None:
            replay = self._replay = deque()
        size = 0
        for payload in payloads:
            replay.append((seq, payload))
            size += len(payload)
            seq += 1
        self.next_seq = seq
        self.replay_bytes += size
        return first

    def unpersisted(self) -> list[tuple[int, bytes]]:
        """What was numbered after :attr:`persisted` and the peer has not acknowledged."""
        start = self.persisted
        found = []
        for entry in reversed(self._replay or ()):  # they are the newest: from the end
            if entry[0] <= start:
                break
            found.append(entry)
        found.reverse()
        return found

    @property
    def needs_persisting(self) -> bool:
        return self.persisted < self.next_seq - 1

    def receipts_upto(self, seq: int) -> list[Receipt]:
        """The receipts held for what was numbered up to ``seq`` (see :meth:`record`)."""
        found = []
        for last, receipt in self._receipts or ():
            if last > seq:
                break
            found.append(receipt)
        return found

    def persisted_upto(self, seq: int) -> None:
        """Everything numbered up to ``seq`` is kept elsewhere too: let its receipts go."""
        if seq <= self.persisted:
            return
        self.persisted = seq
        receipts = self._receipts
        while receipts and receipts[0][0] <= seq:
            receipts.popleft()[1].release()
        if not receipts:
            self._receipts = None

    def acknowledge(self, seq: int) -> bool:
        """The peer delivered everything up to ``seq``: forget it. ``False`` if ``seq`` is
        beyond what was sent (a broken peer); an old acknowledgement is harmless."""
        if seq > self.sent:
            return False
        if seq <= self.peer_acked:
            return True
        self.peer_acked = seq
        replay = self._replay
        freed = 0
        while replay and replay[0][0] <= seq:
            freed += len(replay.popleft()[1])
        if not replay:
            self._replay = None
        self.replay_bytes -= freed
        return True

    def can_resume(self, peer_delivered: int) -> bool:
        """Whether a peer that delivered up to ``peer_delivered`` can be replayed the rest."""
        return self.peer_acked <= peer_delivered <= self.sent

    def resume(self, peer_delivered: int) -> list[tuple[int, bytes]]:
        """Forget what the peer delivered; the rest, in order, to send again."""
        if not self.can_resume(peer_delivered):
            raise ValueError(
                f"peer delivered {peer_delivered}, outside {self.peer_acked}..{self.sent}"
            )
        self.acknowledge(peer_delivered)
        return list(self._replay or ())

    def take_over(
        self,
        session: str,
        peer_delivered: int,
        delivered: int,
        sent: Iterable[tuple[int, bytes]] = (),
    ) -> None:
        """Become, fresh, the session another side served until it died: the peer's is taken
        from after ``delivered`` (what the other side acknowledged); of ``sent`` (what the
        other side numbered and kept elsewhere, in order), what follows ``peer_delivered``
        (what the peer received) without a gap is replayed, and ours is numbered on after."""
        self.lose()
        self.session = session
        self.next_seq = peer_delivered + 1
        self.peer_acked = peer_delivered
        self.delivered = delivered
        for seq, payload in sent:
            if seq < self.next_seq:
                continue
            if seq > self.next_seq:
                break  # a gap: nothing after it can be replayed in order
            self.record([payload])
        self.persisted = self.next_seq - 1

    def lose(self) -> int:
        """The session is gone: forget it and start over; returns how many messages sent were
        never acknowledged (delivered or not, nobody can tell)."""
        lost = self.unacknowledged
        self._replay = None
        self.replay_bytes = 0
        self.persisted = 0
        self._receipts = None  # never let go: not handled
        self.session = None
        self.next_seq = 1
        self.peer_acked = 0
        self.delivered = 0
        return lost


Persist = Callable[[SessionState, list[tuple[int, bytes]], list["Receipt"]], Awaitable[None]]
"""Keeps a session's numbered messages elsewhere (``(number, payload)`` in order), before any
of them is written, with the receipts of those that have one: see
:meth:`WebSocketProxyServer.persist_sessions`."""
