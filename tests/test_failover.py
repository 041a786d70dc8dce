"""A client fails over to another instance, on a durable Redis bus, and loses nothing.

Two instances of one app (separate uvicorn processes) behind a loopback balancer that sends
each new connection to the first instance that takes it; the worker ``sink`` in a third process
(``tests.durable_node``); one real redis-server. A client streams numbered messages to ``sink``
through the balancer; the instance serving it is SIGKILLed mid-stream; the client reconnects
through the balancer, reaches the other instance, resumes its session there, and goes on.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from typing import Any

import pytest

from bench.relay import running_relay
from fastapi_busproxy import BaseWorker, WebSocketProxyClient, WorkerRunner
from fastapi_busproxy.proxy import ReconnectPolicy
from tests.redis_messages import Ping
from tests.redis_support import free_port, redis_server
from tests.test_example_app_redis import process
from tests.test_redis_durable import durable_node

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.uvicorn]

COUNT = 400  # about 4 s at 100 a second


def instance(port: int, env: dict[str, str]) -> Any:
    """One instance of the app: a uvicorn process on ``port``."""
    args = ["-m", "uvicorn", "--factory", "tests.failover_app:create_app", "--port", str(port)]
    args += ["--host", "127.0.0.1", "--ws", "websockets-sansio", "--log-level", "info"]
    return process(sys.executable, *args, env=env, ready=b"Application startup complete")


class Streamer(BaseWorker):
    async def stream(self, count: int) -> None:
        for n in range(1, count + 1):
            await self.send_bus_message(Ping(source=self.name, target="sink", n=n))
            await asyncio.sleep(0.01)  # the load: about 100 messages a second


async def test_a_client_resumes_on_another_instance_when_its_instance_dies() -> None:
    async with redis_server() as redis:
        env = {"BUSPROXY_BUS_URL": redis.url, "BUSPROXY_BUS_DELIVERY": "durable"}
        first_port, second_port = free_port(), free_port()
        async with (
            durable_node(redis.url, "busproxy", "sink") as sink,
            instance(first_port, env) as first,
            instance(second_port, env),
            running_relay(first_port, second_port) as balancer,
        ):
            runner = WorkerRunner(name="client")
            streamer = Streamer("streamer")
            proxy = WebSocketProxyClient(
                "link",
                url=balancer.url("/ws"),
                remote_worker_name="sink",
                local_worker_name="streamer",
                active=True,
                reconnect=ReconnectPolicy(initial_delay=0.05, max_delay=0.5),
            )
            outcomes: list[str] = []

            @proxy.event_handler("on_resumed")
            async def resumed(worker: WebSocketProxyClient) -> None:
                outcomes.append("resumed")

            @proxy.event_handler("on_session_lost")
            async def lost(worker: WebSocketProxyClient, count: int) -> None:
                outcomes.append(f"lost {count}")

            async with runner:
                await runner.add_workers(streamer, proxy)
                await runner.registry.wait_ready("sink", timeout=20)
                sending = asyncio.create_task(streamer.stream(COUNT))
                await sink.wait_for(lambda: len(sink.numbers("GOT")) >= 100)
                first.kill()  # SIGKILL: the instance serving the client dies
                await balancer.wait_connection(2, timeout=30)  # the client came back
                await sending
                await sink.wait_for(lambda: set(sink.numbers("GOT")) >= set(range(1, COUNT + 1)))
                await asyncio.wait_for(proxy.wait_acknowledged(), 30)
        got = sink.numbers("GOT", "streamer")
        counts = Counter(got)
        assert set(range(1, COUNT + 1)) - set(counts) == set()  # nothing lost
        assert {n: c for n, c in counts.items() if c > 1} == {}  # nothing twice
        assert got == sorted(got)  # in order
        assert outcomes == ["resumed"]


async def test_a_session_a_live_instance_holds_is_not_taken_over() -> None:
    """The client lost only its connection and came back through another instance: that one
    refuses for now (1013, try again later) rather than take a session a live instance holds."""
    import websockets
    from fastapi import FastAPI

    from fastapi_busproxy import BusProxySettings, configure_bus, include_bus_proxy
    from fastapi_busproxy.redis import RedisBus
    from fastapi_busproxy.testing import running_app

    def app(url: str) -> FastAPI:
        made = FastAPI()
        configure_bus(made, settings=BusProxySettings(bus_url=url, bus_delivery="durable"))
        include_bus_proxy(made, "/ws", "sink", remote_worker_name="streamer")
        return made

    async with redis_server() as redis:
        host = WorkerRunner(name="host", bus=RedisBus(redis.url, delivery="durable"))
        async with (
            host,
            running_app(app(redis.url)) as first,
            running_app(app(redis.url)) as second,
        ):
            await host.add_workers(BaseWorker("sink"))
            client = WorkerRunner(name="client")
            proxy = WebSocketProxyClient(
                "link",
                url=f"{first}/ws",
                remote_worker_name="sink",
                local_worker_name="streamer",
                active=True,
            )
            async with client:
                await client.add_workers(BaseWorker("streamer"), proxy)
                await client.registry.wait_ready("sink", timeout=20)
                assert proxy.session_id is not None
                async with websockets.connect(
                    f"{second}/ws",
                    subprotocols=["busproxy.v2.json"],  # type: ignore[list-item]
                    additional_headers={"x-busproxy-resume": f"{proxy.session_id} 0 0"},
                ) as other:
                    with pytest.raises(websockets.ConnectionClosed) as closed:
                        await asyncio.wait_for(other.recv(), 10)
                assert closed.value.rcvd is not None
                assert closed.value.rcvd.code == 1013
                assert "held elsewhere" in closed.value.rcvd.reason
