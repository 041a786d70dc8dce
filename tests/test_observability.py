"""Metrics and the status page's data, served by the app: behind its auth, on a real uvicorn
with real peers, counting exactly what a scripted session did."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from fastapi_busproxy import (
    BaseWorker,
    BearerTokenAuth,
    BusDataMessage,
    BusJobRequestMessage,
    BusMessage,
    BusProxySettings,
    ConfigurationError,
    JSONMessageSerializer,
    WebSocketProxyServer,
    configure_bus,
    include_bus_proxy,
    runner_of,
)
from fastapi_busproxy._observer import observer_of
from fastapi_busproxy.messages import wire_name_of
from fastapi_busproxy.metrics import METRICS, include_metrics, metrics_dict
from fastapi_busproxy.redis import RedisBus
from fastapi_busproxy.status import bus_status, include_status_page
from fastapi_busproxy.testing import RemotePeer, running_app

pytestmark = pytest.mark.anyio

TOKEN = "scrape-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass(kw_only=True)
class Question(BusDataMessage):
    text: str = ""


@dataclass(kw_only=True)
class Answer(BusDataMessage):
    text: str = ""


class Assistant(BaseWorker):
    async def on_job_request(self, message: BusJobRequestMessage) -> dict[str, Any] | None:
        return {"n": 2 * (message.payload or {}).get("n", 0)}

    async def on_bus_message(self, message: BusMessage) -> None:
        if isinstance(message, Question):
            await self.send_bus_message(
                Answer(source=self.name, target=message.source, text=message.text.upper())
            )
        await super().on_bus_message(message)


def make_app() -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runner_of(app).add_workers(Assistant("assistant"))
        yield

    app = FastAPI(lifespan=lifespan)
    include_bus_proxy(app, "/ws", "assistant", remote_worker_name="voice")
    include_bus_proxy(app, "/raw", "assistant", remote_worker_name="tester", name="raw")
    auth = [Depends(BearerTokenAuth(tokens={TOKEN: "prometheus"}))]
    include_metrics(app, dependencies=auth)
    include_status_page(app, "/busproxy/status", dependencies=auth, interval=0.05)
    return app


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(http: httpx.AsyncClient) -> Samples:
    response = await http.get("/metrics", headers=AUTH)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def server_proxy(app: FastAPI, name: str) -> WebSocketProxyServer:
    proxy = runner_of(app).get_worker(name)
    assert isinstance(proxy, WebSocketProxyServer)
    return proxy


@pytest.mark.uvicorn
async def test_metrics_after_a_scripted_session() -> None:
    app = make_app()
    async with running_app(app) as url:
        http_url = url.replace("ws://", "http://")
        async with httpx.AsyncClient(base_url=http_url) as http:
            assert (await http.get("/metrics")).status_code == 403
            before = await scrape(http)
            assert value(before, "busproxy_links_total", route="gateway") is None
            assert value(before, "busproxy_workers", location="local") == 1.0
            assert value(before, "busproxy_bus_up", backend="InMemoryBus") == 1.0

            async with RemotePeer(f"{url}/ws", "voice", remote_worker_name="assistant") as peer:
                # A round trip first: everything the peer sent before (its own readiness) has
                # been counted once the answer is back.
                assert await peer.job(payload={"n": 2}) == {"n": 4}
                start = await scrape(http)
                for number in range(5):
                    await peer.send(Question(source="voice", target="assistant", text=f"q{number}"))
                for _ in range(5):
                    await peer.expect(Answer)
                during = await scrape(http)
                proxy = server_proxy(app, "gateway:voice")
                link = {"route": "gateway", "link": "gateway:voice", "remote_worker": "voice"}

                def delta(name: str) -> float:
                    now = value(during, name, route="gateway")
                    then = value(start, name, route="gateway")
                    assert now is not None, name
                    assert then is not None, name
                    return now - then

                assert delta("busproxy_messages_received_total") == 5
                assert delta("busproxy_messages_sent_total") == 5
                assert delta("busproxy_received_bytes_total") > 0
                assert value(during, "busproxy_links_total", route="gateway") == 1
                assert value(during, "busproxy_links_open", route="gateway") == 1
                assert value(during, "busproxy_links_connected", route="gateway") == 1
                assert value(during, "busproxy_link_connected", **link) == 1
                assert value(during, "busproxy_link_messages_received_total", **link) == (
                    proxy.stats.messages_in
                )
                assert value(during, "busproxy_workers", location="remote") == 1
                assert value(during, "busproxy_worker_jobs_in_flight", worker="assistant") == 0
                # The questions waited in the assistant's queue, and were timed there.
                waits = value(during, "busproxy_worker_queue_waits_total", worker="assistant")
                assert waits is not None
                assert waits >= 5
                waited = value(
                    during, "busproxy_worker_queue_wait_seconds_total", worker="assistant"
                )
                assert waited is not None
                assert waited > 0
                assert value(
                    during, "busproxy_worker_dropped_messages_total", worker="assistant"
                ) == 0
                completed = {"worker": "assistant", "status": "completed"}
                assert value(during, "busproxy_worker_jobs_total", **completed) == 1
                assert (value(during, "busproxy_worker_job_seconds_total", worker="assistant")
                        or 0) > 0
                received = value(during, "busproxy_messages_received_total", route="gateway")
                sent = value(during, "busproxy_messages_sent_total", route="gateway")

            # The link has ended (its session with it): its counts stay in the route's totals.
            await asyncio.wait_for(proxy.wait(), 10)
            after = await scrape(http)
            assert value(after, "busproxy_links_total", route="gateway") == 1
            assert value(after, "busproxy_links_open", route="gateway") == 0
            assert value(after, "busproxy_messages_received_total", route="gateway") == received
            assert value(after, "busproxy_messages_sent_total", route="gateway") == sent
            assert value(after, "busproxy_link_connected", **link) is None
            assert value(after, "busproxy_workers", location="remote") == 0


@pytest.mark.uvicorn
async def test_a_refused_message_is_counted_by_reason_and_named_as_the_last_refusal() -> None:
    app = make_app()
    codec = JSONMessageSerializer()
    async with running_app(app) as url:
        async with connect(f"{url}/raw") as ws:
            await ws.recv()  # the registry message announcing "assistant"
            await ws.send(b"{not json")
            await ws.send(codec.serialize(Question(source="tester", target="assistant", text="x")))
            # Messages are taken in order: once the answer is back, the refusal was counted.
            answer = codec.deserialize(await asyncio.wait_for(ws.recv(), 10))  # type: ignore[arg-type]
            assert isinstance(answer, Answer)
            status = bus_status(app)
            (link,) = [link for link in status["links"] if link["route"] == "raw"]
            assert link["rejected_by_reason"] == {"malformed": 1}
            assert link["last_refusal"] == "malformed"
            assert link["peer"].startswith("127.0.0.1:")
            samples = metrics_dict(app)["busproxy_messages_refused_total"]["samples"]
            assert samples == [{"labels": {"route": "raw", "reason": "malformed"}, "value": 1.0}]


def test_the_status_data_and_page_are_behind_the_apps_auth() -> None:
    app = make_app()
    with TestClient(app) as client:
        for path in ("/busproxy/status", "/busproxy/status/json", "/busproxy/status/events"):
            assert client.get(path).status_code == 403, path
            assert client.get(path, headers={"Authorization": "Bearer nope"}).status_code == 403
        page = client.get("/busproxy/status", headers=AUTH)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert '"/busproxy/status/events"' in page.text
        assert "EventSource" in page.text
        data = client.get("/busproxy/status/json", headers=AUTH).json()
        assert data["runner"]["state"] == "running"
        assert [w["name"] for w in data["workers"]] == ["assistant"]
        assert data["links"] == []


@pytest.mark.uvicorn
async def test_the_event_stream_sends_snapshots_and_ends_when_the_app_shuts_down() -> None:
    app = make_app()
    events: list[dict[str, Any]] = []
    two = asyncio.Event()

    async def read(http_url: str) -> str:
        async with httpx.AsyncClient(base_url=http_url, timeout=10) as http:
            async with http.stream("GET", "/busproxy/status/events", headers=AUTH) as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        events.append(json.loads(line[len("data: ") :]))
                        if len(events) == 2:
                            two.set()
        return "ended"

    loop = asyncio.get_running_loop()
    async with running_app(app) as url:
        reader = asyncio.create_task(read(url.replace("ws://", "http://")))
        await asyncio.wait_for(two.wait(), 10)
        shutdown_began = loop.time()
    # The app has shut down with the stream open: the stream ended at once instead of holding
    # the shutdown for its lifetime (30 s).
    assert loop.time() - shutdown_began < 5
    assert await asyncio.wait_for(reader, 5) == "ended"
    assert events[0]["runner"]["state"] == "running"
    assert events[1]["time"] > events[0]["time"]


@pytest.mark.uvicorn
async def test_a_stream_ends_when_its_client_goes_and_streams_are_bounded() -> None:
    app = FastAPI()
    include_status_page(app, "/status", interval=0.05, max_streams=1)
    observer = observer_of(app)
    async with running_app(app) as url, httpx.AsyncClient(
        base_url=url.replace("ws://", "http://"), timeout=10
    ) as http:
        async with http.stream("GET", "/status/events") as response:
            lines = response.aiter_lines()
            while not (await anext(lines)).startswith("data: "):
                pass
            assert observer.streams == 1
            refused = await http.get("/status/events")
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "30"
        # The client went: its stream ends (on its next event), and a new one is let in.
        await asyncio.wait_for(observer.no_streams.wait(), 5)
        async with http.stream("GET", "/status/events") as response:
            assert response.status_code == 200


@pytest.mark.redis
@pytest.mark.uvicorn
async def test_a_redis_bus_shows_its_health_and_publishes() -> None:
    from tests.redis_support import redis_url

    async with redis_url() as bus_url:
        app = make_app()
        configure_bus(app, settings=BusProxySettings(bus_url=bus_url))
        async with running_app(app) as url:
            bus = runner_of(app).bus
            assert isinstance(bus, RedisBus)
            await asyncio.wait_for(bus.wait_healthy(), 10)
            async with httpx.AsyncClient(base_url=url.replace("ws://", "http://")) as http:
                before = await scrape(http)
                assert value(before, "busproxy_bus_up", backend="RedisBus") == 1
                published = value(before, "busproxy_redis_published_messages_total")
                assert published is not None
                peer = RemotePeer(f"{url}/ws", "voice", remote_worker_name="assistant")
                async with peer:
                    assert await peer.job(payload={"n": 3}) == {"n": 6}
                # The request and its answer cross the bus through Redis. Each is delivered in
                # this process before Redis has taken it, so the answer can reach the peer
                # while a publish is in flight: wait for the count the scrape shows.

                async def published_both() -> None:
                    while True:
                        after = await scrape(http)
                        count = value(after, "busproxy_redis_published_messages_total")
                        if count is not None and count >= published + 2:
                            return
                        await asyncio.sleep(0.01)  # a publish is in flight

                await asyncio.wait_for(published_both(), 10)
            assert bus_status(app)["bus"]["stats"]["published"] == bus.stats.published


def test_a_registry_of_the_apps_own_serves_its_metrics_and_ours() -> None:
    from prometheus_client import CollectorRegistry, Counter

    registry = CollectorRegistry()
    logins = Counter("app_logins", "Logins.", registry=registry)
    logins.inc(3)
    app = FastAPI()
    include_bus_proxy(app, "/ws", "assistant", remote_worker_name="voice")
    include_metrics(app, "/ops/metrics", registry=registry)
    with TestClient(app) as client:
        text = client.get("/ops/metrics").text
        assert "app_logins_total 3.0" in text
        assert 'busproxy_bus_up{backend="InMemoryBus"} 1.0' in text
        assert client.get("/ops/metrics").text.count("# TYPE busproxy_bus_up gauge") == 1


@pytest.mark.parametrize(
    "options",
    [{"interval": 0}, {"stream_lifetime": -1}, {"max_streams": 0}, {"path": "status"}],
)
def test_status_page_options_are_checked(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        include_status_page(FastAPI(), **options)


def test_prometheus_metrics_without_prometheus_client_say_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'fastapi-busproxy\[prometheus\]'"):
        include_metrics(FastAPI())
    app = FastAPI()
    include_bus_proxy(app, "/ws", "assistant", remote_worker_name="voice")
    with TestClient(app):
        assert metrics_dict(app)["busproxy_links_open"]["samples"] == []


def test_every_metric_is_documented() -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "observability.md").read_text()
    for spec in METRICS:
        assert f"| `{spec.name}` | {spec.kind} |" in text, f"{spec.name} is not documented"


@pytest.mark.uvicorn
async def test_refused_handshakes_are_counted_by_path_and_status() -> None:
    """A refused handshake never reaches the route: the metrics still see it, with the
    route's path, or (no route) for a wrong URL."""
    app = FastAPI()
    include_bus_proxy(
        app,
        "/ws/{caller}",
        "assistant",
        remote_worker_name="voice",
        dependencies=[Depends(BearerTokenAuth(tokens={"s3cret": "alice"}))],
    )
    include_metrics(app)
    async with running_app(app) as url:
        for path, headers in (
            ("/ws/alice", {"Authorization": "Bearer wrong"}),
            ("/ws/alice", {}),
            ("/nowhere", {"Authorization": "Bearer s3cret"}),
        ):
            with pytest.raises(InvalidStatus) as caught:
                async with connect(f"{url}{path}", additional_headers=headers):
                    pass
            assert caught.value.response.status_code == 403
        async with httpx.AsyncClient(base_url=url.replace("ws://", "http://")) as http:
            response = await http.get("/metrics")
        samples = {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        }
    refused = "busproxy_handshakes_refused_total"
    assert value(samples, refused, path="/ws/{caller}", status="403") == 2
    assert value(samples, refused, path="(no route)", status="403") == 1


@pytest.mark.uvicorn
async def test_messages_are_counted_by_type_and_direction() -> None:
    async with running_app(make_app()) as url:
        async with RemotePeer(f"{url}/ws", "voice", remote_worker_name="assistant") as peer:
            assert await peer.job(payload={"n": 1}) == {"n": 2}
            for number in range(3):
                await peer.send(Question(source="voice", target="assistant", text=f"q{number}"))
            for _ in range(3):
                await peer.expect(Answer)
            async with httpx.AsyncClient(base_url=url.replace("ws://", "http://")) as http:
                samples = await scrape(http)
    by_type = "busproxy_messages_by_type_total"
    question = f"{Question.__module__}.{Question.__qualname__}"
    answer = f"{Answer.__module__}.{Answer.__qualname__}"
    assert value(samples, by_type, route="gateway", type=question, direction="in") == 3
    assert value(samples, by_type, route="gateway", type=answer, direction="out") == 3
    assert value(samples, by_type, route="gateway", type=question, direction="out") == 0
    request = wire_name_of(BusJobRequestMessage)
    assert value(samples, by_type, route="gateway", type=request, direction="in") == 1
    size = value(samples, "busproxy_message_bytes_by_type_total", route="gateway", type=question,
                 direction="in")
    assert size is not None
    assert size > 0
