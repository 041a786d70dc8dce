"""Bus messages: the base classes, the built-in messages and the registry of wire types.

A message is a keyword-only dataclass with a ``source`` (the sending worker's name) and an
optional ``target`` (``None`` is a broadcast)::

    @dataclass(kw_only=True)
    class Transcript(BusDataMessage):
        text: str

Every subclass of :class:`BusMessage` (and of :class:`Frame`) is registered as a wire type when
its class statement runs, under the name ``"<module>.<QualifiedName>"``; built-in messages use
the names of the reference implementation (``pipecat.bus.messages.<Class>``) so that peers
interoperate. The codec builds only registered types. Other dataclasses and enums nested in
messages are registered with :func:`register_wire_type`.

Priority: a :class:`BusSystemMessage` is delivered ahead of the data messages already queued
for a subscriber. :class:`BusLocalMessage` marks a message that never leaves the process.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, is_dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from ._receipt import Receipt

__all__ = [
    "BusActivateWorkerMessage",
    "BusAddWorkerMessage",
    "BusCancelMessage",
    "BusCancelWorkerMessage",
    "BusDataMessage",
    "BusDeactivateWorkerMessage",
    "BusEndMessage",
    "BusEndWorkerMessage",
    "BusFrameMessage",
    "BusJobCancelMessage",
    "BusJobRequestMessage",
    "BusJobResponseMessage",
    "BusJobResponseUrgentMessage",
    "BusJobStreamDataMessage",
    "BusJobStreamEndMessage",
    "BusJobStreamStartMessage",
    "BusJobUpdateMessage",
    "BusJobUpdateRequestMessage",
    "BusJobUpdateUrgentMessage",
    "BusLocalMessage",
    "BusMessage",
    "BusSystemMessage",
    "BusWorkerErrorMessage",
    "BusWorkerLocalErrorMessage",
    "BusWorkerReadyMessage",
    "BusWorkerRegistryMessage",
    "Frame",
    "FrameDirection",
    "JobStatus",
    "Overflow",
    "WorkerRegistryEntry",
    "is_local_only",
    "mark_origin",
    "set_link_seq",
    "set_trace_context",
    "register_wire_type",
    "wire_name_of",
    "wire_type",
]

logger = logging.getLogger(__name__)

_REFERENCE_MESSAGES = "pipecat.bus.messages."

# Wire name <-> class. Only what is in here can be built from bytes.
_WIRE_TYPES: dict[str, type[Any]] = {}
_WIRE_NAMES: dict[type[Any], str] = {}

_T = TypeVar("_T", bound=type[Any])


def register_wire_type(cls: _T, name: str | None = None) -> _T:
    """Allow a dataclass or enum to travel inside messages, under ``name``.

    Subclasses of :class:`BusMessage` are registered automatically; call this (or use it as a
    class decorator) for dataclasses and enums nested in messages, such as frames. The default
    name is ``"<module>.<QualifiedName>"``, the name the reference implementation writes, so
    both peers must define the class under the same module path.

    Raises:
        ConfigurationError: ``cls`` is neither a dataclass nor an enum.
    """
    if not (isinstance(cls, type) and (is_dataclass(cls) or issubclass(cls, enum.Enum))):
        raise ConfigurationError(
            f"register_wire_type() takes a dataclass or an Enum class, not {cls!r}"
        )
    _register(cls, name or f"{cls.__module__}.{cls.__qualname__}")
    return cls


def _register(cls: type[Any], name: str) -> None:
    previous = _WIRE_TYPES.get(name)
    if previous is not None and previous is not cls:
        # Re-running a module (tests, notebooks, reloads) redefines its classes.
        logger.debug("wire type %s now names %r (was %r)", name, cls, previous)
        _WIRE_NAMES.pop(previous, None)
    _WIRE_TYPES[name] = cls
    _WIRE_NAMES[cls] = name


def wire_type(name: str) -> type[Any] | None:
    """Return the class registered under the wire name ``name``, or ``None``."""
    return _WIRE_TYPES.get(name)


def wire_name_of(cls: type[Any]) -> str | None:
    """Return the wire name ``cls`` is registered under, or ``None``."""
    return _WIRE_NAMES.get(cls)


class Overflow(enum.Enum):
    """What a send does when a subscriber's queue is full.

    ``WAIT``: the sender waits for room (backpressure), up to the send timeout if one is given.
    ``DROP``: the message is not queued for that subscriber; the drop is counted on the
    subscription and logged. System messages always wait: they are never dropped silently.
    """

    WAIT = "wait"
    DROP = "drop"


class JobStatus(str, enum.Enum):
    """Final status of a job, written on the wire as the bare string."""

    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"
    ERROR = "error"


class FrameDirection(enum.Enum):
    """Direction of a frame in a pipeline (the reference's ``FrameDirection``)."""

    DOWNSTREAM = 1
    UPSTREAM = 2


_register(FrameDirection, "pipecat.processors.frame_processor.FrameDirection")


@dataclass(kw_only=True)
class BusMessage:
    """Base class of every bus message.

    Attributes:
        source: name of the worker that sent the message.
        target: name of the worker it is for; ``None`` sends it to every worker that listens
            to broadcasts.

    Class attributes a subclass may set:
        system: ``True`` delivers ahead of queued data messages (use :class:`BusSystemMessage`).
        overflow: the :class:`Overflow` policy when a subscriber's queue is full.

    ``origin`` is not a field: it is set by a proxy (or a cross-process bus) on a message that
    arrived from elsewhere, to the name of the link it came through, and is ``None`` for a
    message sent in this process. It never crosses the wire.

    ``trace_context`` is not a field either: the W3C trace context (``traceparent``, then
    ``tracestate`` after a newline, in ASCII) of the span the message was sent in, set when
    tracing is on (:mod:`fastapi_busproxy.tracing`). It crosses our framed links and the Redis
    bus beside the message, never the reference's plain format.

    ``link_seq`` is set by a resumable link on what it lets in: ``(session, number)``, the
    message's identity in its session, by which the durable Redis bus drops a message that a
    client resuming on another instance sends again (:mod:`fastapi_busproxy.redis.streams`).

    ``receipt`` is set by a bus that must know when the message has been handled, not only
    queued (:mod:`fastapi_busproxy._receipt`); it never crosses the wire.
    """

    system: ClassVar[bool] = False
    overflow: ClassVar[Overflow] = Overflow.WAIT
    origin: ClassVar[str | None] = None
    trace_context: ClassVar[bytes | None] = None
    link_seq: ClassVar[tuple[str, int] | None] = None
    receipt: ClassVar[Receipt | None] = None

    source: str
    target: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__module__ == __name__:
            _register(cls, _REFERENCE_MESSAGES + cls.__qualname__)
        else:
            _register(cls, f"{cls.__module__}.{cls.__qualname__}")


def mark_origin(message: BusMessage, link: str) -> None:
    """Record that ``message`` arrived through ``link`` (a proxy or a bus backend)."""
    object.__setattr__(message, "origin", link)


def set_link_seq(message: BusMessage, session: str, seq: int) -> None:
    """Record ``message``'s number in the resumable session it arrived in."""
    object.__setattr__(message, "link_seq", (session, seq))


def set_trace_context(message: BusMessage, context: bytes | None) -> None:
    """Attach the trace context ``message`` travels with (see :class:`BusMessage`)."""
    object.__setattr__(message, "trace_context", context)


@dataclass(kw_only=True)
class BusDataMessage(BusMessage):
    """A message of normal priority: FIFO per subscriber."""


@dataclass(kw_only=True)
class BusSystemMessage(BusMessage):
    """A message delivered ahead of the data messages queued for a subscriber."""

    system: ClassVar[bool] = True


class BusLocalMessage:
    """Marker mix-in: a message of this kind never leaves the process.

    Proxies never send it and cross-process buses never publish it.
    """


def is_local_only(message: BusMessage) -> bool:
    """Return ``True`` if ``message`` must stay in this process."""
    return isinstance(message, BusLocalMessage)


@dataclass(kw_only=True)
class WorkerRegistryEntry:
    """What a runner knows of a worker: its name, parent, activity and start time."""

    name: str
    parent: str | None = None
    active: bool = False
    bridged: bool = False
    started_at: float | None = None


_register(WorkerRegistryEntry, "pipecat.registry.types.WorkerRegistryEntry")


@dataclass(kw_only=True)
class Frame:
    """Base class for frames carried by :class:`BusFrameMessage`.

    A subclass is a wire type as soon as its class statement runs (as message classes are),
    under ``"<module>.<QualifiedName>"``; other dataclasses nested in messages need
    :func:`register_wire_type`.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _register(cls, f"{cls.__module__}.{cls.__qualname__}")


# --- lifecycle -------------------------------------------------------------------------------


@dataclass(kw_only=True)
class BusFrameMessage(BusDataMessage):
    """Carries a pipeline frame between workers.

    ``frame`` must be a value the codec can write: a registered dataclass
    (:func:`register_wire_type`), a dict, or plain JSON values.
    """

    frame: Any
    direction: FrameDirection
    bridge: str | None = None


@dataclass(kw_only=True)
class BusActivateWorkerMessage(BusDataMessage):
    """Asks the target worker to become active; ``args`` reach its ``on_activated``."""

    args: dict[str, Any] | None = None


@dataclass(kw_only=True)
class BusDeactivateWorkerMessage(BusDataMessage):
    """Asks the target worker to become inactive."""


@dataclass(kw_only=True)
class BusEndMessage(BusDataMessage):
    """Asks the runner (no target) or the targeted worker to end after its queued messages."""

    reason: str | None = None


@dataclass(kw_only=True)
class BusEndWorkerMessage(BusDataMessage):
    """Asks the targeted worker to end after its queued messages."""

    reason: str | None = None


@dataclass(kw_only=True)
class BusWorkerReadyMessage(BusDataMessage):
    """Announces that the source worker has started and is ready."""

    runner: str
    parent: str | None = None
    active: bool = False
    bridged: bool = False
    started_at: float | None = None


@dataclass(kw_only=True)
class BusCancelMessage(BusSystemMessage):
    """Asks the runner (no target) or the targeted worker to stop at once."""

    reason: str | None = None


@dataclass(kw_only=True)
class BusCancelWorkerMessage(BusSystemMessage):
    """Asks the targeted worker to stop at once."""

    reason: str | None = None


@dataclass(kw_only=True)
class BusWorkerRegistryMessage(BusSystemMessage):
    """Tells a runner about workers that are ready elsewhere (sent across proxies)."""

    runner: str
    workers: list[WorkerRegistryEntry]


@dataclass(kw_only=True)
class BusWorkerErrorMessage(BusSystemMessage):
    """Reports an error of the source worker."""

    error: str


@dataclass(kw_only=True)
class BusWorkerLocalErrorMessage(BusSystemMessage, BusLocalMessage):
    """Reports an error of a child worker to its parent; it never leaves the process."""

    error: str


@dataclass(kw_only=True)
class BusAddWorkerMessage(BusSystemMessage, BusLocalMessage):
    """Asks the runner to add ``worker``; a live object, so it never leaves the process."""

    worker: Any


# --- jobs ------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class BusJobRequestMessage(BusDataMessage):
    """Asks the target worker to run a job."""

    job_id: str
    job_name: str | None = None
    payload: dict[str, Any] | None = None


@dataclass(kw_only=True)
class BusJobResponseMessage(BusDataMessage):
    """The final answer of a job, with its status."""

    job_id: str
    status: JobStatus
    response: dict[str, Any] | None = None


@dataclass(kw_only=True)
class BusJobResponseUrgentMessage(BusSystemMessage):
    """A final answer delivered ahead of queued data messages."""

    job_id: str
    status: JobStatus
    response: dict[str, Any] | None = None


@dataclass(kw_only=True)
class BusJobUpdateMessage(BusDataMessage):
    """Progress of a running job."""

    job_id: str
    update: dict[str, Any] | None = None


@dataclass(kw_only=True)
class BusJobUpdateUrgentMessage(BusSystemMessage):
    """Progress delivered ahead of queued data messages."""

    job_id: str
    update: dict[str, Any] | None = None


@dataclass(kw_only=True)
class BusJobUpdateRequestMessage(BusDataMessage):
    """Asks the serving worker for an update on a job."""

    job_id: str


@dataclass(kw_only=True)
class BusJobStreamStartMessage(BusDataMessage):
    """Opens a stream of chunks of a job's answer."""

    job_id: str
    data: dict[str, Any] | None = None


@dataclass(kw_only=True)
class BusJobStreamDataMessage(BusDataMessage):
    """One chunk of a job's streamed answer."""

    job_id: str
    data: dict[str, Any] | None = None


@dataclass(kw_only=True)
class BusJobStreamEndMessage(BusDataMessage):
    """Closes a job's stream."""

    job_id: str
    data: dict[str, Any] | None = None


@dataclass(kw_only=True)
class BusJobCancelMessage(BusSystemMessage):
    """Asks the serving worker to cancel a job."""

    job_id: str
    reason: str | None = None
