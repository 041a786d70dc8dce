"""The Redis key and channel scheme of one bus, and its message envelope: pure, no I/O.

Every name starts with the bus's prefix (``busproxy`` unless set), so apps can share a Redis.

=================================  ================================================================
``<prefix>:t:<target>``            pub/sub channel of the messages for one worker
``<prefix>:b``                     pub/sub channel of broadcasts (messages without a target)
``<prefix>:s:<source>``            pub/sub channel of a source someone subscribes to
``<prefix>:y:<type>``              pub/sub channel of a message type someone subscribes to
``<prefix>:control``               registry changes and process hello/bye
``<prefix>:extra-channels``        set of the source and type channels some process wants
``<prefix>:proc:<process>``        a process's heartbeat (expires when it stops beating)
``<prefix>:workers:<process>``     hash of a process's ready workers
``<prefix>:q:<target>``            durable mode: stream of the messages for one worker
``<prefix>:d:<target>``            durable mode: hash, sender process -> last sequence delivered
``<prefix>:epoch``                 durable mode: a random id; gone or changed = Redis lost data
``<prefix>:sess:<session>``        durable mode: a resumable session some instance serves
=================================  ================================================================

**Envelope.** A message travels as ``header + b"\\n" + payload``: the payload is the bus's
serializer's bytes, the header a JSON array ``[process, seq, origin]`` with a fourth element,
the W3C trace context, when the message is traced. In pub/sub mode ``seq`` counts every message
the process published (the receivers drop repeats by ``(process, seq)``); in durable mode it
counts the messages the process sent to that one target's stream, from 1, so a receiver sees a
repeat (seq not above the last delivered) and a gap (messages lost) per sender.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from ..exceptions import MessageDecodeError
from ..interest import InterestIndex
from ..messages import (
    BusAddWorkerMessage,
    BusCancelMessage,
    BusDataMessage,
    BusEndMessage,
    BusMessage,
    BusSystemMessage,
    BusWorkerReadyMessage,
    BusWorkerRegistryMessage,
    wire_name_of,
)
from ..proxy.framing import MAX_TRACE_CONTEXT

__all__ = ["GROUP", "Envelope", "KeyScheme", "decode_envelope", "encode_envelope"]

# Registry traffic is shared through the registry hashes instead; runner control stays local.
PROCESS_LOCAL_TYPES = (BusWorkerRegistryMessage, BusWorkerReadyMessage, BusAddWorkerMessage)
_UNSHARED_INTEREST_TYPES = (*PROCESS_LOCAL_TYPES, BusEndMessage, BusCancelMessage)
_BASE_TYPES = (BusMessage, BusDataMessage, BusSystemMessage)

GROUP = "workers"
"""The consumer group of every target stream (durable mode): one stream per worker name, read by
the process that hosts the worker (its process id is the consumer)."""


@dataclass(frozen=True)
class KeyScheme:
    prefix: str = "busproxy"

    @property
    def control(self) -> str:
        return f"{self.prefix}:control"

    @property
    def extra_channels(self) -> str:
        return f"{self.prefix}:extra-channels"

    @property
    def broadcast(self) -> str:
        return f"{self.prefix}:b"

    @property
    def every_target(self) -> str:
        """The pattern of every target's channel."""
        return f"{self.prefix}:t:*"

    @property
    def epoch(self) -> str:
        return f"{self.prefix}:epoch"

    def target(self, name: str) -> str:
        return f"{self.prefix}:t:{name}"

    def source(self, name: str) -> str:
        return f"{self.prefix}:s:{name}"

    def type(self, wire_name: str) -> str:
        return f"{self.prefix}:y:{wire_name}"

    def process(self, pid: str) -> str:
        return f"{self.prefix}:proc:{pid}"

    def workers(self, pid: str) -> str:
        return f"{self.prefix}:workers:{pid}"

    @property
    def every_workers(self) -> str:
        return f"{self.prefix}:workers:*"

    def pid_of_workers(self, key: str) -> str:
        return key.rsplit(":", 1)[-1]

    def stream(self, target: str) -> str:
        return f"{self.prefix}:q:{target}"

    def target_of_stream(self, key: str) -> str:
        return key[len(self.prefix) + 3 :]

    def session(self, session: str) -> str:
        return f"{self.prefix}:sess:{session}"

    def sent(self, session: str) -> str:
        """What a resumable session sent its client and the client has not acknowledged."""
        return f"{self.prefix}:out:{session}"

    def delivered(self, target: str) -> str:
        return f"{self.prefix}:d:{target}"

    def is_extra(self, channel: str) -> bool:
        """A source or type channel (announced to every process when first wanted)."""
        return channel.startswith((f"{self.prefix}:s:", f"{self.prefix}:y:"))

    def channels_for(
        self, message: BusMessage, extra: set[str] | frozenset[str], *, durable: bool = False
    ) -> list[str]:
        """The channels ``message`` is published to: its target's (unless ``durable``: the
        target's stream carries it then) or the broadcast channel, and the source and type
        channels that some process wants (``extra``)."""
        target = message.target
        channels = []
        if target is None:
            channels.append(self.broadcast)
        elif not durable:
            channels.append(self.target(target))
        if extra:
            source = self.source(message.source)
            if source in extra:
                channels.append(source)
            for cls in type(message).__mro__:
                if cls in _BASE_TYPES or not issubclass(cls, BusMessage):
                    continue
                name = wire_name_of(cls)
                if name is not None and self.type(name) in extra:
                    channels.append(self.type(name))
        return channels

    def wanted_channels(self, index: InterestIndex[object]) -> set[str]:
        """The channels a process subscribes to for the local subscribers in ``index``."""
        everything = {self.control, self.every_target, self.broadcast}
        if index.wants_everything():
            return everything
        wanted = {self.control, *(self.target(name) for name in index.targets())}
        if index.wants_broadcasts():
            wanted.add(self.broadcast)
        wanted.update(self.source(name) for name in index.sources())
        for cls in index.types():
            if issubclass(cls, _UNSHARED_INTEREST_TYPES):
                continue
            if cls in _BASE_TYPES:
                return everything  # a process that wants every data message wants every channel
            name = wire_name_of(cls)
            if name is not None:
                wanted.add(self.type(name))
        return wanted


@dataclass(frozen=True)
class Envelope:
    process: str
    seq: int
    origin: str | None
    payload: bytes
    trace_context: bytes | None = None


def encode_envelope(
    process: str, seq: int, origin: str | None, payload: bytes, trace_context: bytes | None
) -> bytes:
    if trace_context is None:
        header = orjson.dumps([process, seq, origin])
    else:
        header = orjson.dumps([process, seq, origin, trace_context.decode()])
    return header + b"\n" + payload


def decode_envelope(data: bytes) -> Envelope:
    """The envelope in ``data``.

    Raises:
        MessageDecodeError: no valid header (the payload is not decoded here).
    """
    head, sep, payload = data.partition(b"\n")
    try:
        fields = orjson.loads(head) if sep else None
    except orjson.JSONDecodeError:
        fields = None
    if not isinstance(fields, list) or len(fields) < 3:
        raise MessageDecodeError("an envelope without a valid header")
    process, seq, origin = fields[:3]
    if not isinstance(process, str) or not isinstance(seq, int) or isinstance(seq, bool):
        raise MessageDecodeError("an envelope without a valid header")
    context = None
    if len(fields) > 3 and isinstance(fields[3], str) and len(fields[3]) <= MAX_TRACE_CONTEXT:
        context = fields[3].encode()
    return Envelope(process, seq, origin if isinstance(origin, str) else None, payload, context)
