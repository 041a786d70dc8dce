"""OpenTelemetry tracing of bus messages, across workers, links and the Redis bus.

::

    from fastapi_busproxy import tracing

    tracing.instrument()  # the global TracerProvider (or instrument(tracer_provider=...))

Once instrumented, a worker's :meth:`~fastapi_busproxy.BaseWorker.send_bus_message` makes a
``send <target>`` span (kind ``PRODUCER``) in the current context and attaches its W3C trace
context to the message (:attr:`~fastapi_busproxy.BusMessage.trace_context`); the message
carries it over our framed links and the Redis bus (never the reference's plain format). The
worker that handles it opens a ``process <worker>`` span (kind ``CONSUMER``) whose parent is that
context, with a link to it, and handles the message inside it: what the handler sends (a job's
updates and response, say) is part of the same trace. So a job's request, updates and response
form one trace across processes. Names and attributes follow the OpenTelemetry messaging
conventions (``messaging.system``, ``messaging.operation.name`` and ``.type``,
``messaging.destination.name``, ``messaging.message.conversation_id`` for a job's id).

Proxies forward a message with its context and open no span of their own. Readiness and
registry bookkeeping is not traced. A message replayed after a resumed connection travels
without its context.

Needs ``opentelemetry-api`` (``pip install 'fastapi-busproxy[tracing]'``); the SDK, the sampler
and the exporter are the application's. Not instrumented, the hot path pays one global lookup
per message.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from . import _tracing_hook
from .exceptions import ConfigurationError
from .messages import (
    BusLocalMessage,
    BusMessage,
    BusWorkerReadyMessage,
    BusWorkerRegistryMessage,
    set_trace_context,
    wire_name_of,
)

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

__all__ = ["instrument", "is_instrumented", "uninstrument"]

SYSTEM = "fastapi_busproxy"
"""The ``messaging.system`` of our spans."""

_UNTRACED = (BusWorkerReadyMessage, BusWorkerRegistryMessage, BusLocalMessage)

# W3C Trace Context: version-traceid-parentid-flags; a later version may append fields.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE_ID = "0" * 32
_ZERO_SPAN_ID = "0" * 16
_MAX_TRACESTATE = 512  # longer, the propagator drops it too


def instrument(tracer_provider: TracerProvider | None = None) -> None:
    """Trace bus messages from now on, in this process (see the module's docstring).

    Raises:
        ConfigurationError: ``opentelemetry-api`` is not installed.
    """
    try:
        from opentelemetry import trace
    except ImportError:
        raise ConfigurationError(
            "tracing needs opentelemetry-api: pip install 'fastapi-busproxy[tracing]'"
        ) from None
    from . import __version__

    provider = tracer_provider or trace.get_tracer_provider()
    # The wire carries W3C trace context only, whatever the global propagator is.
    _tracing_hook.active = _Tracer(provider.get_tracer(SYSTEM, __version__))


def uninstrument() -> None:
    """Stop tracing (messages already sent keep their contexts)."""
    _tracing_hook.active = None


def is_instrumented() -> bool:
    return _tracing_hook.active is not None


class _Tracer:
    """What the hooks in the worker call while tracing is on."""

    def __init__(self, tracer: Any) -> None:
        from opentelemetry import context, trace

        self._attach = context.attach
        self._detach = context.detach
        self._empty = context.Context()
        self._tracer = tracer
        self._trace = trace
        self._producer = trace.SpanKind.PRODUCER
        self._consumer = trace.SpanKind.CONSUMER

    def sent(self, message: BusMessage, worker: str) -> None:
        """A ``send`` span for ``message``, whose context the message then carries."""
        if isinstance(message, _UNTRACED):
            return
        destination = message.target or "(broadcast)"
        attributes = _attributes(message, "send", destination)
        span = self._tracer.start_span(
            f"send {destination}", kind=self._producer, attributes=attributes
        )
        span.end()
        sender = span.get_span_context()
        if not sender.is_valid:
            return  # a provider that makes no real spans
        # The W3C traceparent and tracestate, as the propagator writes them (without its lookups).
        context = f"00-{sender.trace_id:032x}-{sender.span_id:016x}-{sender.trace_flags:02x}"
        if sender.trace_state:
            context = f"{context}\n{sender.trace_state.to_header()}"
        set_trace_context(message, context.encode())

    @contextlib.contextmanager
    def processing(self, message: BusMessage, worker: str) -> Iterator[None]:
        """Handle ``message`` inside a ``process`` span, child of (and linked to) the context
        it was sent in."""
        if isinstance(message, _UNTRACED):
            yield
            return
        raw = message.trace_context
        parent = None
        links = None
        if raw is not None:
            sender = self._remote_context(raw)
            if sender is not None:
                links = [self._trace.Link(sender)]
                parent = self._trace.set_span_in_context(
                    self._trace.NonRecordingSpan(sender), self._empty
                )
        span = self._tracer.start_span(
            f"process {worker}",
            context=parent,
            kind=self._consumer,
            links=links,
            attributes=_attributes(message, "process", worker),
        )
        token = self._attach(self._trace.set_span_in_context(span))
        try:
            yield
        except Exception as exc:  # the handler's error (a cancellation is not one)
            span.record_exception(exc)
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, str(exc)))
            raise
        finally:
            self._detach(token)
            span.end()

    def _remote_context(self, raw: bytes) -> Any:
        """The sender's span context from a message's ``traceparent[\\ntracestate]``, or None
        when it is not valid W3C trace context (the W3C propagator's checks, without its
        lookups)."""
        traceparent, _, tracestate = raw.decode("ascii", "replace").partition("\n")
        match = _TRACEPARENT.fullmatch(traceparent)
        if match is None:
            return None
        version, trace_id, span_id, flags, later = match.group(1, 2, 3, 4, 5)
        if (
            version == "ff"
            or (version == "00" and later)
            or trace_id == _ZERO_TRACE_ID
            or span_id == _ZERO_SPAN_ID
        ):
            return None
        state = None
        if tracestate and len(tracestate) <= _MAX_TRACESTATE:
            state = self._trace.TraceState.from_header([tracestate])
        return self._trace.SpanContext(
            trace_id=int(trace_id, 16),
            span_id=int(span_id, 16),
            is_remote=True,
            trace_flags=self._trace.TraceFlags(int(flags, 16)),
            trace_state=state,
        )


def _attributes(message: BusMessage, operation: str, destination: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.name": operation,
        "messaging.operation.type": operation,
        "messaging.destination.name": destination,
        "fastapi_busproxy.message.type": wire_name_of(type(message)) or type(message).__name__,
    }
    job_id = getattr(message, "job_id", None)
    if isinstance(job_id, str):
        attributes["messaging.message.conversation_id"] = job_id
    return attributes
