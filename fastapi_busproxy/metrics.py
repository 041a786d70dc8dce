"""Metrics of the app's bus: for Prometheus, or as a plain dict.

::

    app = FastAPI()
    include_bus_proxy(app, "/ws", "assistant", remote_worker_name="voice")
    include_metrics(app, path="/metrics", dependencies=[Depends(BearerTokenAuth(...))])

    metrics_dict(app)["busproxy_messages_received_total"]
    # {"type": "counter", "help": "...", "samples": [{"labels": {"route": "gateway"}, "value": 3}]}

Every value is read when it is asked for, from the counters the links, workers and bus keep
anyway (:func:`~fastapi_busproxy.snapshot.bus_snapshot`): collecting adds nothing to the path
of a message, and nothing at all runs between scrapes. The counters of links that have ended
are kept by route, so the ``_total`` series never go down.

:func:`metrics_dict` needs nothing more than the package. The Prometheus endpoint
(:func:`include_metrics`, :func:`metrics_router`) and :class:`BusProxyCollector` need the
``prometheus`` extra (``pip install 'fastapi-busproxy[prometheus]'``), imported when one of
them is made. Every name, its type, labels and meaning: ``docs/observability.md``.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from fastapi import APIRouter, FastAPI
from fastapi.params import Depends as DependsParam
from starlette.requests import Request
from starlette.responses import Response

from ._observer import observer_lifespan, observer_of
from .bus import time_queues
from .exceptions import ConfigurationError
from .proxy.protocol import count_by_type

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

__all__ = [
    "METRICS",
    "BusProxyCollector",
    "MetricFamily",
    "MetricSpec",
    "include_metrics",
    "metric_families",
    "metrics_dict",
    "metrics_router",
]


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: Literal["counter", "gauge"]
    labels: tuple[str, ...]
    help: str


# (name, counter of LinkStats) for the counters kept by route.
_ROUTE_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("busproxy_messages_received_total", "messages_in",
     "Bus messages received from peers and let in."),
    ("busproxy_messages_sent_total", "messages_out", "Bus messages sent to peers."),
    ("busproxy_received_bytes_total", "bytes_in", "WebSocket payload bytes received."),
    ("busproxy_sent_bytes_total", "bytes_out", "WebSocket payload bytes sent."),
    ("busproxy_frames_sent_total", "frames_out",
     "WebSocket messages sent (several bus messages each when batched)."),
    ("busproxy_messages_dropped_total", "dropped",
     "Outbound messages lost: queue overflow or expiry while disconnected, encode errors,"
     " or left queued when a link ended."),
    ("busproxy_links_closed_oversized_total", "oversized",
     "Connections closed because a message exceeded the size limit (1009)."),
    ("busproxy_links_closed_too_slow_total", "too_slow",
     "Connections closed because the peer did not take what was sent in time (4000)."),
    ("busproxy_reconnects_total", "reconnects", "Connections a client opened after its first."),
    ("busproxy_resumes_total", "resumes", "Connections that resumed an earlier session."),
    ("busproxy_sessions_lost_total", "sessions_lost",
     "Sessions that could not be resumed, or were given up after their grace period."),
    ("busproxy_messages_lost_unacknowledged_total", "lost_unacknowledged",
     "Messages sent in a lost session that the peer never acknowledged."),
    ("busproxy_messages_replayed_total", "replayed", "Messages sent again after a resume."),
    ("busproxy_messages_duplicate_total", "duplicates",
     "Inbound messages dropped because they had been delivered already."),
)

_REDIS_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("busproxy_redis_published_messages_total", "published", "Messages published to Redis."),
    ("busproxy_redis_received_messages_total", "received", "Messages received from Redis."),
    ("busproxy_redis_duplicate_messages_total", "duplicates",
     "Messages from Redis dropped as duplicates."),
    ("busproxy_redis_refused_messages_total", "rejected",
     "Messages from Redis refused (undecodable or not acceptable)."),
    ("busproxy_redis_dropped_messages_total", "dropped",
     "Messages from Redis dropped for a subscriber whose queue stayed full."),
    ("busproxy_redis_reconnects_total", "reconnects", "Reconnections of the Redis listener."),
    ("busproxy_redis_publish_failures_total", "publish_failures",
     "Sends Redis did not take within publish_timeout (the sender got BusUnavailableError)."),
    ("busproxy_redis_lost_messages_total", "lost",
     "Durable delivery: messages found missing from a stream (gaps in a sender's numbers:"
     " trimmed unread, or Redis lost its data)."),
    ("busproxy_redis_data_losses_total", "data_losses",
     "Durable delivery: times Redis was found to have come back without its data."),
)

_LINK = ("route", "link", "remote_worker")

METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("busproxy_links_total", "counter", ("route",),
               "Links (server sessions, client proxies) the route has had."),
    MetricSpec("busproxy_links_open", "gauge", ("route",),
               "Links of the route in the runner now (connected or waiting to resume)."),
    MetricSpec("busproxy_links_connected", "gauge", ("route",),
               "Links of the route whose WebSocket connection is up."),
    *(MetricSpec(name, "counter", ("route",), text) for name, _, text in _ROUTE_COUNTERS),
    MetricSpec("busproxy_handshakes_refused_total", "counter", ("path", "status"),
               "WebSocket handshakes the app refused, by route path ((no route) for an"
               " unknown path) and HTTP status (counted when mounted with include_metrics or"
               " include_status_page)."),
    MetricSpec("busproxy_messages_by_type_total", "counter", ("route", "type", "direction"),
               "Bus messages the route's links received (direction=in) and sent (out), by"
               " type (its wire name). OpenTelemetry: messaging.client.sent.messages,"
               " messaging.client.consumed.messages."),
    MetricSpec("busproxy_message_bytes_by_type_total", "counter",
               ("route", "type", "direction"),
               "Serialized bytes of those messages (payloads, without framing)."),
    MetricSpec("busproxy_messages_refused_total", "counter", ("route", "reason"),
               "Inbound messages or frames refused, by reason."),
    MetricSpec("busproxy_link_connected", "gauge", _LINK,
               "1 while the link's WebSocket connection is up, else 0."),
    MetricSpec("busproxy_link_queued_messages", "gauge", _LINK,
               "Messages waiting to cross the link (send queue, client outbox)."),
    MetricSpec("busproxy_link_age_seconds", "gauge", _LINK,
               "Seconds since the link's proxy became ready."),
    MetricSpec("busproxy_link_rtt_seconds", "gauge", _LINK,
               "The last keepalive round-trip time of the link (once measured)."),
    MetricSpec("busproxy_link_messages_received_total", "counter", _LINK,
               "Bus messages the link received and let in (open links only)."),
    MetricSpec("busproxy_link_messages_sent_total", "counter", _LINK,
               "Bus messages the link sent (open links only)."),
    MetricSpec("busproxy_workers", "gauge", ("location",),
               "Ready workers, local to this runner or remote (reached through a link)."),
    MetricSpec("busproxy_worker_jobs_in_flight", "gauge", ("worker",),
               "Jobs a local worker serves and has not answered yet."),
    MetricSpec("busproxy_worker_jobs_requested", "gauge", ("worker",),
               "Jobs a local worker requested that have not ended yet."),
    MetricSpec("busproxy_worker_queued_messages", "gauge", ("worker",),
               "Messages waiting in a local worker's bus queue."),
    MetricSpec("busproxy_worker_dropped_messages_total", "counter", ("worker",),
               "Messages sent with Overflow.DROP that a local worker's full queue dropped."),
    MetricSpec("busproxy_worker_queue_wait_seconds_total", "counter", ("worker",),
               "Seconds the messages a local worker handled waited, from their send to its"
               " handler, in all (timed once include_metrics has been called)."),
    MetricSpec("busproxy_worker_queue_waits_total", "counter", ("worker",),
               "Messages timed in busproxy_worker_queue_wait_seconds_total (divide the two"
               " rates for the mean wait)."),
    MetricSpec("busproxy_worker_jobs_total", "counter", ("worker", "status"),
               "Jobs a local worker served and ended, by status (completed, failed, error,"
               " cancelled; streamed: a stream's end; unanswered: the answer could not be"
               " sent). OpenTelemetry: messaging.process.duration's count."),
    MetricSpec("busproxy_worker_job_seconds_total", "counter", ("worker",),
               "Seconds the jobs of busproxy_worker_jobs_total took, in all (divide the"
               " two rates for the mean)."),
    MetricSpec("busproxy_bus_up", "gauge", ("backend",),
               "1 while the bus runs and is healthy (Redis: its listener is subscribed)."),
    MetricSpec("busproxy_bus_queued_messages", "gauge", ("backend",),
               "Messages waiting in the bus's subscriber queues, all together."),
    *(MetricSpec(name, "counter", (), text) for name, _, text in _REDIS_COUNTERS),
)
"""Every metric: its name, type, labels and meaning."""

_SPECS = {spec.name: spec for spec in METRICS}


@dataclass
class MetricFamily:
    """One metric and its samples (label values and value), ready for any exposition."""

    name: str
    kind: Literal["counter", "gauge"]
    help: str
    labels: tuple[str, ...]
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)


def metric_families(snapshot: dict[str, Any]) -> list[MetricFamily]:
    """The metrics a :func:`~fastapi_busproxy.snapshot.bus_snapshot` holds, in
    :data:`METRICS` order (a family may have no sample: a gauge of no link)."""
    families = {
        spec.name: MetricFamily(spec.name, spec.kind, spec.help, spec.labels) for spec in METRICS
    }

    def add(name: str, labels: dict[str, str], value: float) -> None:
        families[name].samples.append((labels, float(value)))

    for route, totals in snapshot["routes"].items():
        by_route = {"route": route}
        add("busproxy_links_total", by_route, totals["links_total"])
        add("busproxy_links_open", by_route, totals["links_open"])
        add("busproxy_links_connected", by_route, totals["links_connected"])
        for name, counter, _ in _ROUTE_COUNTERS:
            add(name, by_route, totals["counters"][counter])
        for type_name, counts in totals["by_type"].items():
            for direction in ("in", "out"):
                labels = {"route": route, "type": type_name, "direction": direction}
                add("busproxy_messages_by_type_total", labels, counts[f"messages_{direction}"])
                add("busproxy_message_bytes_by_type_total", labels, counts[f"bytes_{direction}"])
        for reason, count in sorted(totals["rejected_by_reason"].items()):
            add("busproxy_messages_refused_total", {"route": route, "reason": reason}, count)
    for refused in snapshot.get("handshakes_refused", ()):
        labels = {"path": refused["path"], "status": str(refused["status"])}
        add("busproxy_handshakes_refused_total", labels, refused["count"])
    for link in snapshot["links"]:
        labels = {
            "route": link["route"],
            "link": link["name"],
            "remote_worker": link["remote_worker"] or "",
        }
        add("busproxy_link_connected", labels, int(link["connected"]))
        add("busproxy_link_queued_messages", labels, link["queued"])
        if link["age_seconds"] is not None:
            add("busproxy_link_age_seconds", labels, link["age_seconds"])
        if link["last_rtt_seconds"] is not None:
            add("busproxy_link_rtt_seconds", labels, link["last_rtt_seconds"])
        add("busproxy_link_messages_received_total", labels, link["counters"]["messages_in"])
        add("busproxy_link_messages_sent_total", labels, link["counters"]["messages_out"])
    locations = {"local": 0, "remote": 0}
    for worker in snapshot["workers"]:
        if worker["location"] == "remote":
            locations["remote"] += 1
            continue
        if worker["ready"]:
            locations["local"] += 1
        by_worker = {"worker": worker["name"]}
        add("busproxy_worker_jobs_in_flight", by_worker, worker["jobs_in_flight"])
        add("busproxy_worker_jobs_requested", by_worker, worker["jobs_requested"])
        add("busproxy_worker_queued_messages", by_worker, worker["queued"])
        add("busproxy_worker_dropped_messages_total", by_worker, worker["dropped"])
        add("busproxy_worker_queue_wait_seconds_total", by_worker, worker["queue_wait_seconds"])
        add("busproxy_worker_queue_waits_total", by_worker, worker["queue_waits"])
        for status, count in sorted(worker["jobs_served"].items()):
            add("busproxy_worker_jobs_total", {"worker": worker["name"], "status": status}, count)
        add("busproxy_worker_job_seconds_total", by_worker, worker["jobs_served_seconds"])
    for location, count in locations.items():
        add("busproxy_workers", {"location": location}, count)
    bus = snapshot["bus"]
    by_backend = {"backend": bus["backend"]}
    add("busproxy_bus_up", by_backend, int(bus["healthy"]))
    add("busproxy_bus_queued_messages", by_backend, bus["queued"])
    stats = bus["stats"]
    if bus["backend"] == "RedisBus" and stats is not None:
        for name, counter, _ in _REDIS_COUNTERS:
            add(name, {}, stats[counter])
    return [
        family
        for family in families.values()
        if family.samples or not family.name.startswith("busproxy_redis_")
    ]


def metrics_dict(app: Any) -> dict[str, dict[str, Any]]:
    """The app's metrics as a plain dict, without Prometheus.

    ``{name: {"type": "counter" | "gauge", "help": str, "samples": [{"labels": {...},
    "value": float}, ...]}}``, with the names of :data:`METRICS`. Reading it does no I/O.
    The counters of links that end count from the first call, or from the app's start when
    :func:`include_metrics` (or the status page) is included.
    """
    return {
        family.name: {
            "type": family.kind,
            "help": family.help,
            "samples": [{"labels": labels, "value": value} for labels, value in family.samples],
        }
        for family in metric_families(observer_of(app).snapshot())
    }


def _prometheus() -> Any:
    try:
        import prometheus_client
        import prometheus_client.core
    except ImportError as exc:
        raise ConfigurationError(
            "the Prometheus metrics need prometheus-client:"
            " pip install 'fastapi-busproxy[prometheus]'"
        ) from exc
    return prometheus_client


class BusProxyCollector:
    """A ``prometheus_client`` collector of ``app``'s bus metrics, read at each scrape.

    Register it in a registry of your own (``registry.register(BusProxyCollector(app))``) to
    serve the metrics with your other ones; :func:`include_metrics` does it for you.

    Raises:
        ConfigurationError: ``prometheus-client`` is not installed (the ``prometheus`` extra).
    """

    def __init__(self, app: Any) -> None:
        self._core = _prometheus().core
        self._observer = observer_of(app)

    def describe(self) -> list[Any]:
        # Nothing to describe up front: registering does not read the bus.
        return []

    def collect(self) -> Iterator[Any]:
        core = self._core
        for family in metric_families(self._observer.snapshot()):
            kind = core.CounterMetricFamily if family.kind == "counter" else core.GaugeMetricFamily
            metric = kind(family.name, family.help, labels=family.labels)
            for labels, value in family.samples:
                metric.add_metric([labels[name] for name in family.labels], value)
            yield metric


def metrics_router(
    path: str = "/metrics",
    *,
    dependencies: Sequence[DependsParam] | None = None,
    registry: CollectorRegistry | None = None,
    include_in_schema: bool = False,
) -> APIRouter:
    """A router with a ``GET`` route at ``path`` that serves the app's bus metrics in the
    Prometheus text format.

    Args:
        path: the route's path.
        dependencies: FastAPI dependencies run before each scrape (auth).
        registry: a ``prometheus_client.CollectorRegistry`` to serve, with the app's collector
            registered in it on the app's first scrape (for example ``prometheus_client.REGISTRY``
            to serve the process metrics too; one app per registry, or the names would
            repeat); default, one of the route's own.
        include_in_schema: list the route in the app's OpenAPI schema.

    Raises:
        ConfigurationError: ``prometheus-client`` is not installed.
    """
    prometheus = _prometheus()
    if not path.startswith("/"):
        raise ConfigurationError(f"path must start with '/', not {path!r}")
    router = APIRouter(lifespan=observer_lifespan)
    # Each app that includes the router gets its collector, once, in the registry served.
    served: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()

    async def busproxy_metrics(request: Request) -> Response:
        app = request.app
        chosen = served.get(app)
        if chosen is None:
            chosen = registry if registry is not None else prometheus.CollectorRegistry()
            chosen.register(BusProxyCollector(app))
            served[app] = chosen
        return Response(
            prometheus.generate_latest(chosen), media_type=prometheus.CONTENT_TYPE_LATEST
        )

    router.add_api_route(
        path,
        busproxy_metrics,
        methods=["GET"],
        dependencies=list(dependencies or ()),
        include_in_schema=include_in_schema,
        name="busproxy_metrics",
    )
    return router


def include_metrics(
    app: FastAPI,
    path: str = "/metrics",
    *,
    dependencies: Sequence[DependsParam] | None = None,
    registry: CollectorRegistry | None = None,
) -> None:
    """``app.include_router(metrics_router(path, ...))`` in one call, and the counting of
    refused WebSocket handshakes (a middleware: call it before the app starts)."""
    observer_of(app).count_handshakes()
    count_by_type()
    time_queues()
    app.include_router(metrics_router(path, dependencies=dependencies, registry=registry))
