"""What the app's bus looks like now, as plain data: its links, its workers and the bus.

::

    ended = EndedLinks()
    runner.add_finished_listener(ended.add)       # a link's counters outlive it
    data = bus_snapshot(runner, ended=ended, now=time.time())
    json.dumps(data)                              # JSON-ready: str, int, float, bool, None

:func:`bus_snapshot` reads the objects it is given and nothing else: no I/O, no clock (``now``
is passed in), no waiting, and no side effect on what it reads. It is what the metrics
(:mod:`fastapi_busproxy.metrics`) and the status page (:mod:`fastapi_busproxy.status`) show,
read when they are asked, so that watching the bus adds nothing to the path of a message.

The counters of a link are its proxy's :class:`~fastapi_busproxy.LinkStats`, over every
connection the proxy had. A proxy leaves the runner when its session ends; :class:`EndedLinks`
keeps what it counted, by route, so that totals never go down. :class:`RefusalLog` names the
last reason a link refused a message for, as seen from one reading to the next.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .proxy._base import ProxyWorker
from .proxy.client import WebSocketProxyClient
from .proxy.protocol import LinkStats
from .proxy.server import WebSocketProxyServer
from .runner import WorkerRunner
from .worker import BaseWorker, WorkerState

__all__ = ["COUNTERS", "EndedLinks", "RefusalLog", "RouteTotals", "bus_snapshot", "route_of"]

COUNTERS: tuple[str, ...] = tuple(
    f.name
    for f in fields(LinkStats)
    if f.name not in ("rejected_by_reason", "last_rtt", "by_type")
)
"""The counters of a link, as :class:`~fastapi_busproxy.LinkStats` names them."""


_BY_TYPE_KEYS = ("messages_in", "messages_out", "bytes_in", "bytes_out")


def route_of(proxy: ProxyWorker) -> str:
    """The route a link belongs to: for a server proxy the plugin made, the route's name
    (its worker name is ``"<route name>:<remote worker name>"``); otherwise the proxy's name."""
    if isinstance(proxy, WebSocketProxyServer) and ":" in proxy.name:
        return proxy.name.split(":", 1)[0]
    return proxy.name


@dataclass
class RouteTotals:
    """What the links of one route that have ended counted, added up."""

    links: int = 0
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    by_type: dict[str, list[int]] = field(default_factory=dict)

    def add(self, stats: LinkStats) -> None:
        self.links += 1
        for name in COUNTERS:
            self.counters[name] += getattr(stats, name)
        for reason, count in stats.rejected_by_reason.items():
            self.rejected_by_reason[reason] = self.rejected_by_reason.get(reason, 0) + count
        self.add_by_type(stats.by_type)

    def add_by_type(self, by_type: Mapping[str, list[int]]) -> None:
        for name, counts in by_type.items():
            mine = self.by_type.setdefault(name, [0, 0, 0, 0])
            for index, count in enumerate(counts):
                mine[index] += count


class EndedLinks:
    """The counters of links that have ended, by route.

    Give :meth:`add` to :meth:`WorkerRunner.add_finished_listener
    <fastapi_busproxy.WorkerRunner.add_finished_listener>`: it keeps the counters of each proxy
    that leaves the runner (and ignores other workers). It holds one :class:`RouteTotals` per
    route, not per link.
    """

    def __init__(self) -> None:
        self.by_route: dict[str, RouteTotals] = {}

    def add(self, worker: BaseWorker) -> None:
        if isinstance(worker, ProxyWorker):
            self.by_route.setdefault(route_of(worker), RouteTotals()).add(worker.stats)


class RefusalLog:
    """The last reason each link refused a message for, as seen from one reading to the next.

    :meth:`seen` compares a link's ``rejected_by_reason`` with the previous reading: the reason
    whose count grew (the one that grew most, when several did) becomes the link's last
    refusal. It remembers the links of the last reading only.
    """

    def __init__(self) -> None:
        self._counts: dict[str, dict[str, int]] = {}
        self._last: dict[str, str] = {}

    def seen(self, link: str, rejected_by_reason: Mapping[str, int]) -> str | None:
        """The last refusal of ``link``, given its counts now (``None`` if it never refused)."""
        before = self._counts.get(link, {})
        grown = {
            reason: count - before.get(reason, 0)
            for reason, count in rejected_by_reason.items()
            if count > before.get(reason, 0)
        }
        if grown:
            self._last[link] = max(sorted(grown), key=lambda reason: grown[reason])
        self._counts[link] = dict(rejected_by_reason)
        return self._last.get(link)

    def keep_only(self, links: Iterable[str]) -> None:
        """Forget every link but ``links`` (those of the latest reading)."""
        kept = set(links)
        for table in (self._counts, self._last):
            for name in [name for name in table if name not in kept]:
                del table[name]


def bus_snapshot(
    runner: WorkerRunner,
    *,
    now: float,
    ended: EndedLinks | None = None,
    refusals: RefusalLog | None = None,
) -> dict[str, Any]:
    """The state of ``runner``'s links, workers and bus, as a JSON-ready dict.

    Args:
        runner: the runner to read (the app's: :func:`~fastapi_busproxy.runner_of`).
        now: the wall-clock time (``time.time()``) ages are measured to.
        ended: the counters of links that have ended, added to the totals by route.
        refusals: where the last refusal of each link is kept between readings (without it,
            ``last_refusal`` is ``None``); the links not in this reading are forgotten.

    Returns:
        ``{"runner": ..., "links": [...], "workers": [...], "bus": ..., "routes": {...}}``:
        see ``docs/observability.md`` for every key.
    """
    proxies = [w for w in runner.workers if isinstance(w, ProxyWorker)]
    links = [_link(proxy, now, refusals) for proxy in proxies]
    if refusals is not None:
        refusals.keep_only(proxy.name for proxy in proxies)
    registry = runner.registry
    workers = [
        _local_worker(worker, now, worker.name in registry)
        for worker in runner.workers
        if not isinstance(worker, ProxyWorker)
    ]
    for name in registry.remote_workers:
        entry = registry.entry(name)
        ready = registry.get(name)
        workers.append(
            {
                "name": name,
                "location": "remote",
                "state": "ready",
                "active": entry.active if entry is not None else True,
                "via": registry.origin_of(name),
                "runner": ready.runner if ready is not None else None,
                "started_at": entry.started_at if entry is not None else None,
                "jobs_in_flight": None,
                "jobs_requested": None,
                "jobs_served": None,
                "jobs_served_seconds": None,
                "queued": None,
                "dropped": None,
                "queue_wait_seconds": None,
                "queue_waits": None,
            }
        )
    return {
        "time": now,
        "runner": {"name": runner.name, "state": runner.state.value},
        "links": links,
        "workers": workers,
        "bus": _bus(runner),
        "routes": _routes(proxies, ended),
    }


def _link(proxy: ProxyWorker, now: float, refusals: RefusalLog | None) -> dict[str, Any]:
    stats = proxy.stats
    close = getattr(proxy, "close_info", None)
    if isinstance(proxy, WebSocketProxyServer):
        kind, local, remote = "server", proxy.worker_name, proxy.remote_worker_name
        peer: str | None = proxy.peer if proxy.peer != "?" else None
        detached = proxy.detached
    elif isinstance(proxy, WebSocketProxyClient):
        kind, local, remote = "client", proxy.local_worker_name, proxy.remote_worker_name
        peer = _without_secrets(proxy.url)
        detached = False
    else:  # pragma: no cover - the two proxies are the only links
        kind, local, remote, peer, detached = "link", None, None, None, False
    connected = proxy.connected
    if proxy.state is not WorkerState.RUNNING:
        state = proxy.state.value
    elif connected:
        state = "connected"
    else:
        state = "detached" if detached else "disconnected"
    rejected = dict(stats.rejected_by_reason)
    return {
        "name": proxy.name,
        "kind": kind,
        "route": route_of(proxy),
        "local_worker": local,
        "remote_worker": remote,
        "peer": peer,
        "state": state,
        "connected": connected,
        "started_at": proxy.started_at,
        "age_seconds": _age(proxy.started_at, now),
        "last_rtt_seconds": stats.last_rtt,
        "queued": proxy.queued,
        "counters": {name: getattr(stats, name) for name in COUNTERS},
        "rejected_by_reason": rejected,
        "last_refusal": refusals.seen(proxy.name, rejected) if refusals is not None else None,
        "close": None if close is None else {"code": close.code, "reason": close.reason},
    }


def _local_worker(worker: BaseWorker, now: float, ready: bool) -> dict[str, Any]:
    # The private job tables: the public properties would create them.
    server = worker._job_server
    requester = worker._job_requester
    subscription = worker.subscription
    return {
        "name": worker.name,
        "location": "local",
        "state": worker.state.value,
        "active": worker.active,
        "ready": ready,
        "started_at": worker.started_at,
        "age_seconds": _age(worker.started_at, now),
        "jobs_in_flight": len(server.active_jobs) if server is not None else 0,
        "jobs_requested": len(requester.groups) if requester is not None else 0,
        "jobs_served": dict(server.stats.by_status) if server is not None else {},
        "jobs_served_seconds": server.stats.seconds if server is not None else 0.0,
        "queued": subscription.queued if subscription is not None else 0,
        "dropped": subscription.dropped if subscription is not None else 0,
        "queue_wait_seconds": subscription.wait_seconds if subscription is not None else 0.0,
        "queue_waits": subscription.waited if subscription is not None else 0,
    }


def _bus(runner: WorkerRunner) -> dict[str, Any]:
    bus = runner.bus
    healthy = getattr(bus, "healthy", None)
    stats = getattr(bus, "stats", None)
    return {
        "backend": type(bus).__name__,
        "running": bus.running,
        # A bus without a health of its own (in memory) is healthy while it runs.
        "healthy": bool(healthy) if isinstance(healthy, bool) else bus.running,
        "subscriptions": len(bus.subscriptions),
        "queued": sum(s.queued for s in bus.subscriptions),
        "stats": (
            {f.name: getattr(stats, f.name) for f in fields(stats)}
            if is_dataclass(stats) and not isinstance(stats, type)
            else None
        ),
    }


def _routes(proxies: list[ProxyWorker], ended: EndedLinks | None) -> dict[str, Any]:
    """Totals by route: the links open now plus those that have ended."""
    routes: dict[str, RouteTotals] = {}
    open_links: dict[str, int] = {}
    connected: dict[str, int] = {}
    for proxy in proxies:
        route = route_of(proxy)
        routes.setdefault(route, RouteTotals()).add(proxy.stats)
        open_links[route] = open_links.get(route, 0) + 1
        connected[route] = connected.get(route, 0) + int(proxy.connected)
    for route, totals in (ended.by_route if ended is not None else {}).items():
        merged = routes.setdefault(route, RouteTotals())
        merged.links += totals.links
        for name, value in totals.counters.items():
            merged.counters[name] += value
        for reason, count in totals.rejected_by_reason.items():
            merged.rejected_by_reason[reason] = merged.rejected_by_reason.get(reason, 0) + count
        merged.add_by_type(totals.by_type)
    return {
        route: {
            "links_open": open_links.get(route, 0),
            "links_connected": connected.get(route, 0),
            "links_total": totals.links,
            "counters": totals.counters,
            "rejected_by_reason": totals.rejected_by_reason,
            "by_type": {
                name: dict(zip(_BY_TYPE_KEYS, counts, strict=True))
                for name, counts in sorted(totals.by_type.items())
            },
        }
        for route, totals in sorted(routes.items())
    }


def _age(started_at: float | None, now: float) -> float | None:
    return None if started_at is None else max(0.0, now - started_at)


def _without_secrets(url: str) -> str:
    """``url`` without credentials or query (a token may travel there)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))
