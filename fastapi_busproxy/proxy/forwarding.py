"""The forwarding rules of a proxy link: what crosses to the peer, what is let in.

Pure decisions, no I/O. A link has a *local* worker (the one on this side that talks to the
peer) and a *remote* worker (the one on the other side).

Outbound (:meth:`ForwardingRules.should_send`):

- a local-only message never crosses;
- a message targeted at the remote worker crosses (on the server side only if its source is
  the local worker, as in the reference);
- a message of a ``forward_types`` type crosses when its source is the local worker, whatever
  its target;
- nothing else crosses: broadcasts stay home unless their type is forwarded.

Inbound (:meth:`ForwardingRules.check_inbound`), stricter than the reference, which trusted
``source``:

- a message must come from the remote worker and be targeted at the local worker;
- a ``forward_types`` message must come from one of ``forward_sources`` (default: the remote
  worker) and be targeted at the local worker or at nobody (a broadcast);
- a registry message is accepted only if every entry it carries is the remote worker;
- a worker-ready message only from the remote worker, about itself;
- end and cancel requests (of the session, or of a worker) must come from the remote worker,
  untargeted or targeted at the local worker; they never reach the bus: the proxy ends or
  cancels its own session instead (:func:`session_control`), so a peer can end its own
  connection but never a worker that other connections share, nor the runner.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..interest import Interest
from ..messages import (
    BusCancelMessage,
    BusCancelWorkerMessage,
    BusEndMessage,
    BusEndWorkerMessage,
    BusMessage,
    BusWorkerReadyMessage,
    BusWorkerRegistryMessage,
    is_local_only,
)

__all__ = ["ForwardingRules", "Refusal", "SessionControl", "session_control"]

_SESSION_CONTROL = (BusEndMessage, BusCancelMessage, BusEndWorkerMessage, BusCancelWorkerMessage)


class SessionControl(str, enum.Enum):
    """What an accepted end or cancel request from the peer does to the proxy's session."""

    END = "end"
    CANCEL = "cancel"


def session_control(message: BusMessage) -> SessionControl | None:
    """``END`` or ``CANCEL`` for an end or cancel request, ``None`` for any other message."""
    if isinstance(message, (BusEndMessage, BusEndWorkerMessage)):
        return SessionControl.END
    if isinstance(message, (BusCancelMessage, BusCancelWorkerMessage)):
        return SessionControl.CANCEL
    return None


class Refusal(str, enum.Enum):
    """Why an inbound message was refused (also the key of the link's rejection counters)."""

    LOCAL_ONLY = "local_only"
    FORGED_SOURCE = "forged_source"
    WRONG_TARGET = "wrong_target"
    FOREIGN_REGISTRY = "foreign_registry"


@dataclass(frozen=True)
class ForwardingRules:
    """The rules of one link.

    Args:
        local_worker: the worker on this side (client: ``local_worker_name``; server:
            ``worker_name``).
        remote_worker: the worker on the other side (``remote_worker_name``).
        forward_types: extra message types forwarded by source (``forward_messages``).
        outbound_needs_local_source: the server's rule: a targeted message crosses only when
            the local worker sent it.
        forward_sources: sources accepted for inbound ``forward_types`` messages (default: the
            remote worker only).
    """

    local_worker: str
    remote_worker: str
    forward_types: tuple[type[BusMessage], ...] = ()
    outbound_needs_local_source: bool = False
    forward_sources: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def build(
        cls,
        *,
        local_worker: str,
        remote_worker: str,
        forward_types: Iterable[type[BusMessage]] = (),
        outbound_needs_local_source: bool = False,
        forward_sources: Iterable[str] | None = None,
    ) -> ForwardingRules:
        return cls(
            local_worker=local_worker,
            remote_worker=remote_worker,
            forward_types=tuple(forward_types),
            outbound_needs_local_source=outbound_needs_local_source,
            forward_sources=frozenset(forward_sources or (remote_worker,)),
        )

    def interest(self) -> Interest:
        """What the link must receive from the local bus to apply :meth:`should_send`."""
        return Interest(targets=frozenset((self.remote_worker,)), types=self.forward_types)

    def should_send(self, message: BusMessage) -> bool:
        """Return ``True`` if ``message``, seen on the local bus, crosses to the peer."""
        if is_local_only(message):
            return False
        if message.target == self.remote_worker and (
            not self.outbound_needs_local_source or message.source == self.local_worker
        ):
            return True
        return (
            bool(self.forward_types)
            and message.source == self.local_worker
            and isinstance(message, self.forward_types)
        )

    def check_inbound(self, message: BusMessage) -> Refusal | None:
        """Return ``None`` if ``message`` from the peer may enter the local bus, else why not."""
        if is_local_only(message):
            return Refusal.LOCAL_ONLY
        if isinstance(message, BusWorkerRegistryMessage):
            if message.target not in (None, self.local_worker) or any(
                entry.name != self.remote_worker for entry in message.workers
            ):
                return Refusal.FOREIGN_REGISTRY
            return None
        if isinstance(message, BusWorkerReadyMessage):
            if message.source != self.remote_worker:
                return Refusal.FORGED_SOURCE
            return None if message.target in (None, self.local_worker) else Refusal.WRONG_TARGET
        if isinstance(message, _SESSION_CONTROL):
            if message.source != self.remote_worker:
                return Refusal.FORGED_SOURCE
            return None if message.target in (None, self.local_worker) else Refusal.WRONG_TARGET
        if self.forward_types and isinstance(message, self.forward_types):
            if message.source not in self.forward_sources:
                return Refusal.FORGED_SOURCE
            if message.target not in (None, self.local_worker):
                return Refusal.WRONG_TARGET
            return None
        if message.source != self.remote_worker:
            return Refusal.FORGED_SOURCE
        if message.target != self.local_worker:
            return Refusal.WRONG_TARGET
        return None
