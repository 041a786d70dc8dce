"""A client fails over to another instance, on a durable Redis bus, and loses nothing.

Two instances of one app (separate uvicorn processes) behind a loopback balancer that sends
each new connection to the first instance that takes it; the worker ``sink`` in a third process
(``tests.durable_node``); one real redis-server. A client streams numbered messages to ``sink``
through the balancer, and ``sink`` streams to the client; the instance serving the client is
SIGKILLed mid-stream, after the network between them failed (what it sent last never reached
the client); the client reconnects through the balancer, reaches the other instance, resumes
its session there, and both streams go on.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from typing import Any

import pytest

from bench.relay import running_relay
from fastapi_busproxy import (
    BaseWorker,
    BusMessage,
    InMemoryBus,
    WebSocketProxyClient,
    WorkerRunner,
)
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
    """Streams numbered Pings to ``sink``, and keeps the numbers of those ``sink`` streams."""

    def __init__(self, name: str, pace: float) -> None:
        super().__init__(name)
        self.pace = pace
        self.got: list[int] = []
        self._arrived = asyncio.Event()

    async def stream(self, count: int) -> None:
        for n in range(1, count + 1):
            await self.send_bus_message(Ping(source=self.name, target="sink", n=n))
            await asyncio.sleep(0.01)  # the load: about 100 messages a second

    async def on_bus_message(self, message: BusMessage) -> None:
        if isinstance(message, Ping):
            await asyncio.sleep(self.pace)  # slower than sink sends: a backlog builds up
            self.got.append(message.n)
            self._arrived.set()
        else:
            await super().on_bus_message(message)

    async def wait_last(self, last: int) -> None:
        """Until ``last`` arrives (each sender's order is kept: all before it are in)."""
        while self.got[-1:] != [last]:
            self._arrived.clear()
            await self._arrived.wait()


def lost_and_twice(got: list[int], count: int) -> tuple[set[int], dict[int, int]]:
    counts = Counter(got)
    return set(range(1, count + 1)) - set(counts), {n: c for n, c in counts.items() if c > 1}


async def test_a_client_resumes_on_another_instance_when_its_instance_dies() -> None:
    async with redis_server() as redis:
        env = {"BUSPROXY_BUS_URL": redis.url, "BUSPROXY_BUS_DELIVERY": "durable"}
        first_port, second_port = free_port(), free_port()
        async with (
            durable_node(redis.url, "busproxy", "sink", peer="streamer", count=COUNT) as sink,
            instance(first_port, env) as first,
            instance(second_port, env),
            running_relay(first_port, second_port) as balancer,
        ):
            # A small queue: the client's link stops reading while its worker lags, and what
            # the instance sends waits in the sockets' buffers when the instance dies.
            runner = WorkerRunner(name="client", bus=InMemoryBus(capacity=8))
            streamer = Streamer("streamer", pace=0.015)
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
                assert 50 <= len(streamer.got) < COUNT  # both ways mid-stream
                # The network between them fails first: what the instance sends from now on
                # never reaches the client (a half-open connection) ...
                sent = len(sink.numbers("SENT"))
                assert balancer.cut("rst", None) == 1
                await sink.wait_for(lambda: len(sink.numbers("SENT")) >= sent + 30)
                first.kill()  # ... then the instance dies (SIGKILL)
                await balancer.wait_connection(2, timeout=30)  # the client came back
                await sending
                await sink.wait_for(lambda: sink.numbers("GOT")[-1:] == [COUNT], 30)
                await asyncio.wait_for(proxy.wait_acknowledged(), 30)
                await sink.wait_for(lambda: "DONE" in sink.lines, 30)
                await asyncio.wait_for(streamer.wait_last(COUNT), 30)
        # Client to worker, and worker to client: nothing lost, nothing twice, in order.
        ways = {"to the worker": sink.numbers("GOT", "streamer"), "to the client": streamer.got}
        for way, got in ways.items():
            assert lost_and_twice(got, COUNT) == (set(), {}), way
            assert got == sorted(got), way
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
