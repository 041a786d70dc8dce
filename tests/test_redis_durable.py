"""Durable delivery on a real Redis, under faults, counting what is lost and what is repeated.

Each node is a separate OS process (``tests.durable_node``) that prints what it sent and what
its worker got; a killed node's lines stay with the test. Redis is restarted (SIGTERM, 1 s
down) with an append-only file fsynced always, or killed and started without its data.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from fastapi_busproxy import BaseWorker, BusMessage, BusUnavailableError, WorkerRunner
from fastapi_busproxy.interest import Interest
from fastapi_busproxy.redis import RedisBus
from tests.redis_messages import Ping
from tests.redis_support import ROOT, redis_server

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

DOWN = 1.0  # seconds Redis stays down in a restart


class DurableNode:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            self.lines.append(line.decode().strip())
            self._changed.set()
        self._changed.set()

    async def wait_for(self, condition: Callable[[], bool], timeout: float = 60) -> None:
        async def wait() -> None:
            while not condition():
                if self.process.returncode is not None and self._reader.done():
                    raise AssertionError(f"the node exited: {self.lines[-5:]}")
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(wait(), timeout)
        except asyncio.TimeoutError:
            last = self.lines[-5:]
            raise AssertionError(f"not seen in {timeout}s; the node's last: {last}") from None

    def numbers(self, word: str, sender: str | None = None) -> list[int]:
        found = []
        for line in self.lines:
            parts = line.split()
            if parts[0] != word:
                continue
            if word == "GOT":
                if sender is None or parts[1] == sender:
                    found.append(int(parts[2]))
            else:
                found.append(int(parts[1]))
        return found

    def losses(self, reason: str) -> list[int]:
        return [int(line.split()[2]) for line in self.lines if line.startswith(f"LOSS {reason}")]

    async def stop(self, kill: bool = False) -> None:
        if self.process.returncode is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
        await asyncio.wait_for(self.process.wait(), 15)
        await self._reader


@asynccontextmanager
async def durable_node(
    url: str, ns: str, worker: str, peer: str | None = None, count: int = 0, pace: float = 0
) -> AsyncIterator[DurableNode]:
    args = [sys.executable, "-m", "tests.durable_node", "--url", url, "--worker", worker]
    args += ["--prefix", ns, "--pace", str(pace)]
    if peer is not None:
        args += ["--peer", peer, "--count", str(count)]
    process = await asyncio.create_subprocess_exec(
        *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=None
    )
    node = DurableNode(process)
    try:
        await node.wait_for(lambda: any(line.startswith("READY") for line in node.lines), 20)
        yield node
    finally:
        await node.stop(kill=True)


def prefix() -> str:
    return f"durable-{uuid.uuid4().hex[:8]}"


def lost_and_repeated(sent: list[int], got: list[int]) -> tuple[set[int], dict[int, int]]:
    counts = Counter(got)
    return set(sent) - set(counts), {n: c for n, c in counts.items() if c > 1}


class Collector(BaseWorker):
    """A worker in the test's own process that keeps the Pings it gets, as (source, n)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.got: list[tuple[str, int]] = []
        self._arrived = asyncio.Event()

    async def on_bus_message(self, message: BusMessage) -> None:
        if isinstance(message, Ping):
            self.got.append((message.source, message.n))
            self._arrived.set()
        else:
            await super().on_bus_message(message)

    async def wait_count(self, count: int) -> None:
        while len(self.got) < count:
            self._arrived.clear()
            await self._arrived.wait()


async def test_messages_for_a_worker_that_is_down_are_kept_and_come_in_order() -> None:
    async with redis_server() as redis:
        ns = prefix()
        async with durable_node(redis.url, ns, "a", peer="b", count=50) as a:
            await a.wait_for(lambda: "DONE" in a.lines)
            assert a.numbers("SENT") == list(range(1, 51))
            async with durable_node(redis.url, ns, "b") as b:
                await b.wait_for(lambda: len(b.numbers("GOT")) >= 50)
                assert b.numbers("GOT", "a") == list(range(1, 51))


async def test_redis_restarted_three_times_loses_and_repeats_nothing(tmp_path: Path) -> None:
    count = 600  # each way, about 6 s at 100 a second
    async with redis_server(data_dir=tmp_path) as redis:
        ns = prefix()
        async with (
            durable_node(redis.url, ns, "a", peer="b", count=count) as a,
            durable_node(redis.url, ns, "b", peer="a", count=count) as b,
        ):
            for round_ in range(3):
                # Each restart once more messages have crossed: the streams are busy.
                await b.wait_for(lambda r=round_: len(b.numbers("GOT")) >= 100 * (r + 1))
                await redis.terminate()
                await asyncio.sleep(DOWN)  # the fault: Redis is down this long
                await redis.start()
            for node in (a, b):
                await node.wait_for(lambda n=node: "DONE" in n.lines, 90)
            await a.wait_for(lambda: len(a.numbers("GOT")) >= len(b.numbers("SENT")), 60)
            await b.wait_for(lambda: len(b.numbers("GOT")) >= len(a.numbers("SENT")), 60)
            for sender, receiver in ((a, b), (b, a)):
                assert sender.numbers("FAIL") == []
                sent = sender.numbers("SENT")
                got = receiver.numbers("GOT")
                assert len(sent) == count
                lost, repeated = lost_and_repeated(sent, got)
                assert (lost, repeated) == (set(), {})
                assert got == sorted(got)  # the sender's order


@pytest.mark.parametrize("kill", [True, False], ids=["SIGKILL", "SIGTERM"])
async def test_a_node_replaced_under_its_name_loses_and_repeats_nothing(kill: bool) -> None:
    count = 400
    async with redis_server() as redis:
        ns = prefix()
        async with durable_node(redis.url, ns, "a", peer="b", count=count) as a:
            # b handles about 50 a second of the 100 a second a sends: its queue fills.
            async with durable_node(redis.url, ns, "b", pace=0.02) as b:
                await b.wait_for(lambda: len(b.numbers("GOT")) >= 50)
                # Stopped at a moment of a's choosing, while a keeps sending, with
                # messages in b's queue and one in its handler.
                await a.wait_for(lambda: len(a.numbers("SENT")) >= 150)
                assert len(b.numbers("GOT")) < 140
                await b.stop(kill=kill)
            first = b.numbers("GOT", "a")
            async with durable_node(redis.url, ns, "b") as b2:
                await a.wait_for(lambda: "DONE" in a.lines, 60)
                sent = a.numbers("SENT")
                # Order is kept: once the last one sent is in, all that will come is in.
                await b2.wait_for(lambda: b2.numbers("GOT")[-1:] == sent[-1:], 20)
                second = b2.numbers("GOT", "a")
        lost, repeated = lost_and_repeated(sent, first + second)
        assert lost == set()
        if kill:
            # The one window left: a message the killed node's worker had handled, whose
            # acknowledgement had not reached Redis yet, is handed to the new node again.
            assert set(repeated) <= {first[-1]}, repeated
            assert second[0] in (first[-1], first[-1] + 1)  # goes on where it stopped
        else:  # a clean stop acknowledges what it handled before it goes
            assert repeated == {}
            assert second[0] == first[-1] + 1
        assert first == sorted(first)  # the sender's order
        assert second == sorted(second)


async def test_redis_restarted_without_its_data_reports_the_loss_with_a_count() -> None:
    count = 200
    async with redis_server() as redis:
        ns = prefix()
        async with durable_node(redis.url, ns, "a", peer="b", count=count) as a:
            await a.wait_for(lambda: len(a.numbers("SENT")) >= 80)
            await redis.stop()  # SIGKILL, and no persistence: the stream for b is gone
            await redis.start()
            await a.wait_for(lambda: "DONE" in a.lines, 60)
            await a.wait_for(lambda: bool(a.losses("epoch")))  # the sender saw Redis forget
            async with durable_node(redis.url, ns, "b") as b:
                await b.wait_for(lambda: bool(b.losses("gap")))
                reported = sum(b.losses("gap"))
                await b.wait_for(lambda: len(b.numbers("GOT", "a")) + reported >= count)
                received = b.numbers("GOT", "a")
        # Nothing vanished silently: what b got and what b was told it lost make up all.
        assert a.numbers("SENT") == list(range(1, count + 1))
        assert reported >= 1
        assert received == list(range(reported + 1, count + 1))


async def test_a_send_redis_cannot_take_is_refused_to_the_sender() -> None:

    async with redis_server() as redis:
        bus = RedisBus(redis.url, prefix=prefix(), delivery="durable", publish_timeout=0.3)
        async with WorkerRunner(name="lonely", bus=bus):
            await bus.send(Ping(source="a", target="elsewhere", n=1))  # kept for later
            await redis.stop()  # Redis is gone: the next send waits 0.3 s, then says so
            with pytest.raises(BusUnavailableError, match="did not take Ping"):
                await bus.send(Ping(source="a", target="elsewhere", n=2))
            assert bus.stats.publish_failures == 1
            assert bus.stats.published == 1


async def test_many_senders_in_one_process_lose_nothing() -> None:
    """Tasks of one process sending to one worker at once: each message keeps its number's
    place in the stream, so none is taken for a gap or a repeat."""

    async with redis_server() as redis:
        ns = prefix()
        senders = RedisBus(redis.url, prefix=ns, delivery="durable")
        receivers = RedisBus(redis.url, prefix=ns, delivery="durable")
        sink = Collector("sink")
        async with WorkerRunner(name="a", bus=senders), WorkerRunner(name="b", bus=receivers) as b:
            await b.add_workers(sink)

            async def send(source: str) -> None:
                for n in range(5):
                    await senders.send(Ping(source=source, target="sink", n=n))

            await asyncio.gather(*(send(f"task-{i}") for i in range(100)))
            await asyncio.wait_for(sink.wait_count(500), 30)
            sent = [(f"task-{i}", n) for i in range(100) for n in range(5)]
            assert sorted(sink.got) == sorted(sent)
            assert receivers.stats.lost == 0
            assert receivers.stats.duplicates == 0


async def test_what_a_worker_that_leaves_has_not_taken_waits_for_the_next() -> None:
    """A worker stops with a backlog in its stream: what it had not handled (the message it
    was handling, its queue, the stream) stays unacknowledged, for the next worker of that
    name, in order."""

    class Stalls(BaseWorker):
        """Takes 20 messages, then stalls on the 21st."""

        def __init__(self) -> None:
            super().__init__("b")
            self.got: list[int] = []
            self.stalled = asyncio.Event()

        async def on_bus_message(self, message: BusMessage) -> None:
            if not isinstance(message, Ping):
                await super().on_bus_message(message)
            elif len(self.got) == 20:
                self.stalled.set()
                await asyncio.Event().wait()
            else:
                self.got.append(message.n)

    async with redis_server() as redis:
        ns = prefix()
        sender = RedisBus(redis.url, prefix=ns, delivery="durable")
        async with WorkerRunner(name="a", bus=sender):
            for n in range(1, 301):
                await sender.send(Ping(source="a", target="b", n=n))
            first = Stalls()
            small = RedisBus(redis.url, prefix=ns, delivery="durable", capacity=2)
            runner = WorkerRunner(name="b1", bus=small)
            async with runner:
                await runner.add_workers(first)
                await asyncio.wait_for(first.stalled.wait(), 30)
                await runner.cancel("gone")
            async with durable_node(redis.url, ns, "b") as second:
                await second.wait_for(lambda: second.numbers("GOT", "a")[-1:] == [300])
                rest = second.numbers("GOT", "a")
        # The one it stalled on and its queue (2) were not handled: the next worker gets them.
        assert first.got == list(range(1, 21))
        assert rest == list(range(21, 301))


async def test_a_process_restarted_under_the_same_id_is_a_new_sender() -> None:
    """Numbers start over with each start of a process, even under a fixed process id: its
    messages after a restart are not taken for repeats of the ones before."""

    async with redis_server() as redis:
        ns = prefix()
        for start in (0, 1):
            bus = RedisBus(redis.url, prefix=ns, delivery="durable", process_id="fixed")
            async with WorkerRunner(name=f"a{start}", bus=bus):
                for n in range(3):
                    await bus.send(Ping(source="a", target="b", n=10 * start + n))
        async with durable_node(redis.url, ns, "b") as b:
            await b.wait_for(lambda: len(b.numbers("GOT")) >= 6)
            assert b.numbers("GOT", "a") == [0, 1, 2, 10, 11, 12]


async def test_a_process_that_also_watches_everything_reads_its_workers_backlog() -> None:

    async def watch(message: BusMessage) -> None:
        pass

    async with redis_server() as redis:
        ns = prefix()
        sender = RedisBus(redis.url, prefix=ns, delivery="durable")
        async with WorkerRunner(name="a", bus=sender):
            for n in range(20):
                await sender.send(Ping(source="a", target="b", n=n))
            bus = RedisBus(redis.url, prefix=ns, delivery="durable")
            async with WorkerRunner(name="host", bus=bus) as runner:
                await bus.subscribe("monitor", watch, Interest(everything=True))
                sink = Collector("b")
                await runner.add_workers(sink)
                await asyncio.wait_for(sink.wait_count(20), 20)
                assert sink.got == [("a", n) for n in range(20)]


async def test_what_a_process_sends_a_clients_worker_goes_through_its_stream() -> None:
    """For a client's worker whose session another instance may take over, even a sender in
    the serving process goes through the stream: what was not passed on to the client when the
    process dies is still there, for the instance that takes over."""
    import redis.asyncio as redis_asyncio

    async with redis_server() as redis:
        ns = prefix()
        bus = RedisBus(redis.url, prefix=ns, delivery="durable")
        client = redis_asyncio.Redis.from_url(redis.url)
        try:
            async with WorkerRunner(name="instance", bus=bus) as runner:
                proxy = Collector("c")  # stands for the proxy of the remote worker c
                await runner.add_workers(proxy)
                bus.send_through_stream("c")
                await bus.send(Ping(source="w", target="c", n=1))
                await asyncio.wait_for(proxy.wait_count(1), 10)
                assert await client.xlen(f"{ns}:q:c") == 1
                bus.stop_sending_through_stream("c")
                await bus.send(Ping(source="w", target="c", n=2))  # to its subscriber here
                await asyncio.wait_for(proxy.wait_count(2), 10)
                assert await client.xlen(f"{ns}:q:c") == 1
                assert proxy.got == [("w", 1), ("w", 2)]
        finally:
            await client.aclose()
