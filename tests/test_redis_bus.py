"""RedisBus against a real Redis server, with workers in separate OS processes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import pytest
from fastapi import FastAPI

from fastapi_busproxy import (
    BaseWorker,
    BusProxySettings,
    BusUnavailableError,
    WebSocketProxyClient,
    WorkerRunner,
    configure_bus,
    include_bus_proxy,
)
from fastapi_busproxy.proxy import ReconnectPolicy
from fastapi_busproxy.redis import RedisBus
from tests.redis_messages import Ping
from tests.redis_support import node, redis_server, redis_url
from tests.servers import running_uvicorn

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

FAST = {"heartbeat_interval": 0.2, "heartbeat_ttl": 0.8}


def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


@asynccontextmanager
async def local_runner(
    url: str, ns: str, *workers: BaseWorker, **options: Any
) -> AsyncIterator[tuple[WorkerRunner, RedisBus]]:
    bus = RedisBus(url, prefix=ns, **{**FAST, "publish_timeout": 2.0, **options})
    runner = WorkerRunner(name="test-runner", bus=bus)
    async with runner:
        await runner.add_workers(*workers)
        yield runner, bus


class Gone:
    """Waits until a name leaves a registry (registry listeners, no polling)."""

    def __init__(self, runner: WorkerRunner) -> None:
        self.names: set[str] = set()
        self._event = asyncio.Event()
        runner.registry.add_listener(self._changed)

    def _changed(self, change: str, entry: Any, origin: str | None) -> None:
        if change == "unregistered":
            self.names.add(entry.name)
            self._event.set()

    async def wait(self, name: str) -> None:
        while name not in self.names:
            self._event.clear()
            await self._event.wait()


async def test_a_job_crosses_processes() -> None:
    async with redis_url() as url:
        ns = prefix()
        caller = BaseWorker("caller")
        async with (
            node(url, "echo", ns, **FAST) as echo,
            local_runner(url, ns, caller) as (
                runner,
                _,
            ),
        ):
            with anyio.fail_after(10):
                entry = await runner.registry.wait_ready("echo")
                assert entry.name == "echo"
                assert runner.registry.origin_of(
                    "echo",
                ).startswith("redis:")  # type: ignore[union-attr]
                async with caller.job("echo", payload={"x": 1}) as job:
                    pass
            assert job.response == {"worker": "echo", "pid": echo.pid, "payload": {"x": 1}}


async def test_a_message_for_one_process_reaches_that_process_only() -> None:
    async with redis_url() as url:
        ns = prefix()
        caller = BaseWorker("caller")
        async with AsyncExitStack() as stack:
            nodes = [
                await stack.enter_async_context(node(url, f"w{i}", ns, **FAST)) for i in range(4)
            ]
            runner, _ = await stack.enter_async_context(local_runner(url, ns, caller))

            async def stats(name: str) -> dict[str, Any]:
                async with caller.job(name, name="stats", timeout=10) as job:
                    pass
                assert set(job.response) == {"pings", "received", "pid"}
                return job.response

            with anyio.fail_after(20):
                for i in range(4):
                    await runner.registry.wait_ready(f"w{i}")
                before = [await stats(f"w{i}") for i in range(4)]
                for n in range(50):
                    await caller.send_bus_message(Ping(source="caller", target="w2", n=n))
                after = [await stats(f"w{i}") for i in range(4)]
            assert [s["pid"] for s in after] == [n.pid for n in nodes]
            assert after[2]["pings"] == list(range(50))
            for i in (0, 1, 3):
                assert after[i]["pings"] == []
                # Between the two stats requests, these processes received exactly one
                # message from Redis: the second stats request itself.
                assert after[i]["received"] - before[i]["received"] == 1
            assert after[2]["received"] - before[2]["received"] == 51


async def test_the_registry_follows_processes_that_stop_or_die() -> None:
    async with redis_url() as url:
        ns = prefix()
        async with local_runner(url, ns) as (runner, _):
            gone = Gone(runner)
            with anyio.fail_after(15):
                async with node(url, "graceful", ns, **FAST) as graceful:
                    await runner.registry.wait_ready("graceful")
                    await graceful.terminate()  # SIGTERM: the node stops its runner and says bye
                    await gone.wait("graceful")
                async with node(url, "killed", ns, **FAST) as killed:
                    await runner.registry.wait_ready("killed")
                    await killed.kill()  # SIGKILL: no goodbye; the heartbeat key expires
                    started = asyncio.get_running_loop().time()
                    await gone.wait("killed")
                    elapsed = asyncio.get_running_loop().time() - started
            # Documented bound: heartbeat_ttl + heartbeat_interval (with slack for a busy CI).
            assert elapsed < FAST["heartbeat_ttl"] + FAST["heartbeat_interval"] + 2.0
            assert "graceful" not in runner.registry
            assert "killed" not in runner.registry


async def test_the_bus_recovers_after_redis_restarts() -> None:
    async with redis_server() as server:
        ns = prefix()
        caller = BaseWorker("caller")
        async with (
            node(server.url, "echo", ns, **FAST),
            local_runner(server.url, ns, caller, publish_timeout=0.3) as (runner, bus),
        ):
            with anyio.fail_after(10):
                await runner.registry.wait_ready("echo")
                async with caller.job("echo", payload={"before": True}) as job:
                    pass
            assert job.response["payload"] == {"before": True}
            await server.stop()
            # A publish while Redis is down is refused loudly, never dropped silently.
            failures = bus.stats.publish_failures
            with pytest.raises(BusUnavailableError):
                await caller.send_bus_message(Ping(source="caller", target="echo", n=1))
            assert bus.stats.publish_failures == failures + 1  # counted (and in the metrics)
            await server.start()
            with anyio.fail_after(20):
                await bus.wait_healthy()
                await runner.registry.wait_ready("echo")
                async with caller.job("echo", payload={"after": True}, timeout=10) as job:
                    pass
            assert job.response["payload"] == {"after": True}
            assert bus.stats.reconnects >= 1


async def test_a_client_of_process_a_reaches_a_worker_in_process_b() -> None:
    async with redis_url() as url:
        ns = prefix()
        app = FastAPI()
        settings = BusProxySettings(bus_url=url)
        bus = RedisBus(url, prefix=ns, **FAST)
        configure_bus(app, settings=settings, runner=WorkerRunner(bus=bus))
        include_bus_proxy(app, "/ws", "assistant", remote_worker_name="voice")
        client_runner = WorkerRunner(name="client")
        voice = BaseWorker("voice")
        proxy = WebSocketProxyClient(
            "link",
            url="ws://127.0.0.1:1/ws",
            remote_worker_name="assistant",
            local_worker_name="voice",
            reconnect=ReconnectPolicy(initial_delay=0.05, max_delay=0.2),
        )
        async with node(url, "assistant", ns, **FAST) as process_b, running_uvicorn(app) as a:
            proxy.url = a.url("/ws")
            async with client_runner:
                await client_runner.add_workers(voice, proxy)
                await proxy.connect()
                with anyio.fail_after(15):
                    # Process A learns of "assistant" from Redis and announces it over the link.
                    await client_runner.registry.wait_ready("assistant")
                    async with voice.job("assistant", payload={"q": "hi"}) as job:
                        pass
        assert job.response == {"worker": "assistant", "pid": process_b.pid, "payload": {"q": "hi"}}


async def test_a_process_that_dies_while_its_workers_are_read_stays_gone() -> None:
    """The registry reads a process's workers (an await on Redis); if the process is declared
    dead meanwhile, what was read is stale and must not bring its workers back."""
    from fastapi_busproxy.messages import WorkerRegistryEntry

    async with redis_url() as url:
        ns = prefix()
        async with local_runner(url, ns) as (runner, bus):
            pid = "dead-process"
            entry = WorkerRegistryEntry(name="ghost")
            replica = bus._replica
            await bus._redis.hset(bus.keys.workers(pid), "ghost", replica.encode_entry(entry))
            loading = asyncio.create_task(replica.load_process(pid))
            await asyncio.sleep(0)  # the load is waiting on Redis now
            replica.forget_process(pid)  # ...when the process is found dead
            await loading
            assert "ghost" not in runner.registry
            # A process that is alive is loaded as before.
            await replica.load_process(pid)
            assert "ghost" in runner.registry
