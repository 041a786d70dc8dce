"""The snapshot of a runner's bus and the metrics read from it, as pure code: objects in, plain
data out, no server, no clock."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from fastapi_busproxy import (
    BaseWorker,
    WebSocketProxyClient,
    WebSocketProxyServer,
    WorkerRegistryEntry,
    WorkerRunner,
)
from fastapi_busproxy.metrics import METRICS, metric_families
from fastapi_busproxy.redis import RedisBus
from fastapi_busproxy.snapshot import COUNTERS, EndedLinks, RefusalLog, bus_snapshot, route_of

pytestmark = pytest.mark.anyio

NOW = 1_000_000.0


def server_proxy(remote: str, *, route: str = "gateway") -> WebSocketProxyServer:
    websocket = SimpleNamespace(scope={"client": ("127.0.0.1", 40001)})
    return WebSocketProxyServer(
        f"{route}:{remote}", websocket=websocket, worker_name="assistant", remote_worker_name=remote
    )


async def a_runner() -> tuple[WorkerRunner, WebSocketProxyServer, WebSocketProxyClient]:
    """A runner that has not started: two links (one each way), a worker, a remote worker."""
    runner = WorkerRunner(name="app")
    server = server_proxy("voice")
    client = WebSocketProxyClient(
        "upstream",
        url="wss://user:secret@127.0.0.1:9000/ws?token=secret",
        remote_worker_name="planner",
        local_worker_name="assistant",
    )
    await runner.add_workers(BaseWorker("assistant"), server, client)
    runner.registry.register_remote(
        WorkerRegistryEntry(name="voice", active=True), origin=server.name, runner="phone-1"
    )
    return runner, server, client


async def test_a_snapshot_is_plain_data_with_each_link_worker_and_the_bus() -> None:
    runner, server, _ = await a_runner()
    server.stats.messages_in = 3
    server.stats.bytes_out = 120
    server.stats.rejected_by_reason["forged_source"] = 2
    server.stats.rejected = 2
    server.stats.last_rtt = 0.004

    snapshot = bus_snapshot(runner, now=NOW)

    assert json.loads(json.dumps(snapshot)) == snapshot
    assert snapshot["runner"] == {"name": "app", "state": "created"}
    links = {link["name"]: link for link in snapshot["links"]}
    assert set(links) == {"gateway:voice", "upstream"}
    voice = links["gateway:voice"]
    assert voice["kind"] == "server"
    assert voice["route"] == "gateway"
    assert (voice["local_worker"], voice["remote_worker"]) == ("assistant", "voice")
    assert voice["peer"] == "127.0.0.1:40001"
    assert voice["state"] == "created"  # not started: neither connected nor detached
    assert voice["connected"] is False
    assert voice["counters"]["messages_in"] == 3
    assert voice["counters"]["bytes_out"] == 120
    assert set(voice["counters"]) == set(COUNTERS)
    assert voice["rejected_by_reason"] == {"forged_source": 2}
    assert voice["last_rtt_seconds"] == 0.004
    assert voice["last_refusal"] is None  # no RefusalLog given
    upstream = links["upstream"]
    assert upstream["kind"] == "client"
    assert upstream["route"] == "upstream"
    assert upstream["peer"] == "wss://127.0.0.1:9000/ws"  # no credentials, no query
    workers = {worker["name"]: worker for worker in snapshot["workers"]}
    assert set(workers) == {"assistant", "voice"}  # the proxies are links, not workers here
    assert workers["assistant"]["location"] == "local"
    assert workers["assistant"]["jobs_in_flight"] == 0
    assert workers["voice"]["location"] == "remote"
    assert workers["voice"]["via"] == "gateway:voice"
    assert workers["voice"]["runner"] == "phone-1"
    assert snapshot["bus"]["backend"] == "InMemoryBus"
    assert snapshot["bus"]["healthy"] is False  # not running
    gateway = snapshot["routes"]["gateway"]
    assert (gateway["links_open"], gateway["links_total"]) == (1, 1)
    assert gateway["counters"]["messages_in"] == 3


async def test_reading_does_not_create_job_tables() -> None:
    runner, _, _ = await a_runner()
    worker = runner.get_worker("assistant")
    assert worker is not None
    bus_snapshot(runner, now=NOW)
    assert worker._job_server is None
    assert worker._job_requester is None


async def test_ended_links_keep_their_counters_by_route() -> None:
    runner, server, _ = await a_runner()
    ended = EndedLinks()
    for remote, messages in (("alice", 5), ("bob", 7)):
        gone = server_proxy(remote)
        gone.stats.messages_out = messages
        gone.stats.rejected_by_reason["malformed"] = 1
        ended.add(gone)
    ended.add(BaseWorker("not-a-link"))  # ignored
    server.stats.messages_out = 1

    routes = bus_snapshot(runner, now=NOW, ended=ended)["routes"]

    assert set(routes) == {"gateway", "upstream"}
    gateway = routes["gateway"]
    assert gateway["links_open"] == 1
    assert gateway["links_total"] == 3
    assert gateway["counters"]["messages_out"] == 13
    assert gateway["rejected_by_reason"] == {"malformed": 2}


def test_refusal_log_names_the_reason_that_grew() -> None:
    log = RefusalLog()
    assert log.seen("a", {}) is None
    assert log.seen("a", {"malformed": 1}) == "malformed"
    assert log.seen("a", {"malformed": 1, "wrong_target": 1}) == "wrong_target"
    assert log.seen("a", {"malformed": 1, "wrong_target": 1}) == "wrong_target"  # unchanged
    assert log.seen("a", {"malformed": 4, "wrong_target": 2}) == "malformed"  # grew most
    log.keep_only(["b"])
    assert log.seen("a", {"malformed": 4, "wrong_target": 2}) == "malformed"  # new to the log


async def test_the_snapshot_keeps_the_last_refusal_between_readings() -> None:
    runner, server, _ = await a_runner()
    refusals = RefusalLog()
    assert bus_snapshot(runner, now=NOW, refusals=refusals)["links"][0]["last_refusal"] is None
    server.stats.rejected_by_reason["local_only"] = 1
    link = bus_snapshot(runner, now=NOW, refusals=refusals)["links"][0]
    assert link["last_refusal"] == "local_only"


def test_route_of_a_proxy() -> None:
    assert route_of(server_proxy("voice", route="calls")) == "calls"


async def test_metric_families_follow_the_snapshot() -> None:
    runner, server, _ = await a_runner()
    server.stats.messages_in = 4
    server.stats.rejected_by_reason["wrong_target"] = 3
    families = {f.name: f for f in metric_families(bus_snapshot(runner, now=NOW))}

    assert set(families) <= {spec.name for spec in METRICS}
    for family in families.values():
        assert family.name.startswith("busproxy_")
        assert family.kind != "counter" or family.name.endswith("_total"), family.name
        for labels, _ in family.samples:
            assert tuple(labels) == family.labels
    received = dict(
        (labels["route"], value)
        for labels, value in families["busproxy_messages_received_total"].samples
    )
    assert received == {"gateway": 4.0, "upstream": 0.0}
    assert families["busproxy_messages_refused_total"].samples == [
        ({"route": "gateway", "reason": "wrong_target"}, 3.0)
    ]
    assert families["busproxy_workers"].samples == [
        ({"location": "local"}, 0.0),  # nothing is ready before the runner starts
        ({"location": "remote"}, 1.0),
    ]
    assert not any(name.startswith("busproxy_redis_") for name in families)


async def test_a_redis_bus_shows_its_health_and_counters() -> None:
    bus = RedisBus("redis://127.0.0.1:1/0")
    bus.stats.published = 9
    runner = WorkerRunner(name="app", bus=bus)
    snapshot = bus_snapshot(runner, now=NOW)
    assert snapshot["bus"]["backend"] == "RedisBus"
    assert snapshot["bus"]["healthy"] is False
    assert snapshot["bus"]["stats"]["published"] == 9
    families = {f.name: f for f in metric_families(snapshot)}
    assert families["busproxy_redis_published_messages_total"].samples == [({}, 9.0)]
    assert families["busproxy_bus_up"].samples == [({"backend": "RedisBus"}, 0.0)]
