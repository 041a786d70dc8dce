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
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    from . import __version__

    provider = tracer_provider or trace.get_tracer_provider()
    # The wire carries W3C trace context only: its propagator, whatever the global one is.
    _tracing_hook.active = _Tracer(
        provider.get_tracer(SYSTEM, __version__), TraceContextTextMapPropagator()
    )


def uninstrument() -> None:
    """Stop tracing (messages already sent keep their contexts)."""
    _tracing_hook.active = None


def is_instrumented() -> bool:
    return _tracing_hook.active is not None


class _Tracer:
    """What the hooks in the worker call while tracing is on."""

    def __init__(self, tracer: Any, propagator: Any) -> None:
        from opentelemetry import context, trace

        self._attach = context.attach
        self._detach = context.detach
        self._tracer = tracer
        self._propagator = propagator
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
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=self._trace.set_span_in_context(span))
        span.end()
        parent = carrier.get("traceparent")
        if parent is None:
            return  # a propagator that writes no W3C context
        state = carrier.get("tracestate")
        context = parent if not state else f"{parent}\n{state}"
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
            text = raw.decode("ascii", "replace")
            traceparent, _, tracestate = text.partition("\n")
            carrier = {"traceparent": traceparent}
            if tracestate:
                carrier["tracestate"] = tracestate
            parent = self._propagator.extract(carrier)
            sender = self._trace.get_current_span(parent).get_span_context()
            if sender.is_valid:
                links = [self._trace.Link(sender)]
            else:
                parent = None
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
