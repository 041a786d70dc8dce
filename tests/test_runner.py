"""WorkerRunner: adding workers, running and ending, the registry, and who may end the runner."""

from __future__ import annotations

import asyncio
import logging
import re

import anyio
import pytest

from fastapi_busproxy import (
    InMemoryBus,
    InvalidStateError,
    WorkerReadyData,
    WorkerRegistry,
    WorkerRunner,
    WorkerSession,
    WorkerUnreachableError,
)
from fastapi_busproxy.exceptions import ConfigurationError, DuplicateWorkerError
from fastapi_busproxy.messages import (
    BusAddWorkerMessage,
    BusCancelMessage,
    BusCancelWorkerMessage,
    BusEndMessage,
    BusEndWorkerMessage,
    BusMessage,
    BusWorkerReadyMessage,
    BusWorkerRegistryMessage,
    WorkerRegistryEntry,
    mark_origin,
)
from fastapi_busproxy.runner import RunnerState
from tests.core_support import Hello, Probe, running, wait_finished

pytestmark = pytest.mark.anyio


async def start_run(runner: WorkerRunner, *ready: str, auto_end: bool = True) -> asyncio.Task[None]:
    """Run ``runner`` in a task and wait until the workers ``ready`` are ready."""
    task = asyncio.create_task(runner.run(auto_end=auto_end))
    for name in ready:
        await runner.registry.wait_ready(name, timeout=5)
    return task


async def finish(task: asyncio.Task[None]) -> None:
    with anyio.fail_after(5):
        await task


async def test_defaults_and_a_given_bus() -> None:
    runner = WorkerRunner()
    assert re.fullmatch(r"runner-[0-9a-f]{8}", runner.name)
    assert isinstance(runner.bus, InMemoryBus)
    assert runner.state is RunnerState.CREATED
    bus = InMemoryBus(capacity=5)
    assert WorkerRunner(name="mine", bus=bus).bus is bus


async def test_workers_added_before_the_start_start_with_the_runner() -> None:
    runner = WorkerRunner(name="r")
    ready_at_on_ready: list[list[str]] = []

    @runner.event_handler("on_ready")
    def on_ready(runner: WorkerRunner) -> None:
        ready_at_on_ready.append(runner.registry.local_workers)

    worker = Probe("w")
    await runner.add_workers(worker)
    assert runner.get_worker("w") is worker
    assert runner.workers == [worker]
    assert "w" not in runner.registry
    # Attached at once: the worker knows its runner before it starts.
    assert worker.runner is runner
    assert worker.worker_runner is runner
    assert worker.bus is runner.bus
    assert worker.registry is runner.registry
    assert worker.session is runner.session
    assert worker.hooks == []

    async with runner:
        assert runner.state is RunnerState.RUNNING
        assert runner.bus.running
        assert ready_at_on_ready == [["w"]]
        assert "w" in runner.registry
        assert runner.registry.get("w") == WorkerReadyData(worker_name="w", runner="r")
        entry = runner.registry.entry("w")
        assert entry == WorkerRegistryEntry(name="w", active=True, started_at=worker.started_at)
        late = Probe("late")
        await runner.add_workers(late)  # added while running: started at once
        assert "late" in runner.registry
    assert runner.state is RunnerState.FINISHED
    assert not runner.bus.running
    assert worker.finished
    assert late.finished


async def test_duplicate_names_are_refused() -> None:
    runner = WorkerRunner()
    with pytest.raises(DuplicateWorkerError):
        await runner.add_workers(Probe("twin"), Probe("twin"))
    assert runner.workers == []  # nothing of a refused call is added
    await runner.add_workers(Probe("pending"))
    with pytest.raises(DuplicateWorkerError):
        await runner.add_workers(Probe("pending"))
    async with runner:
        await runner.add_workers(Probe("running"))
        with pytest.raises(DuplicateWorkerError, match="running"):
            await runner.add_workers(Probe("new"), Probe("running"))
        assert runner.get_worker("new") is None
        with pytest.raises(ConfigurationError):
            await runner.add_workers("not a worker")  # type: ignore[arg-type]


async def test_a_finished_worker_is_removed_and_its_name_can_be_used_again() -> None:
    first = Probe("w")
    async with running(first) as runner:
        await first.end_worker("w")
        await wait_finished(first)
        assert runner.get_worker("w") is None
        assert "w" not in runner.registry
        second = Probe("w")
        await runner.add_workers(second)
        assert runner.get_worker("w") is second
        assert "w" in runner.registry


async def test_finished_listeners_see_each_worker_that_left_once() -> None:
    seen: list[tuple[str, bool]] = []
    first, second = Probe("a"), Probe("b")
    async with running(first, second) as runner:

        def listener(worker: object) -> None:
            assert isinstance(worker, Probe)
            seen.append((worker.name, runner.get_worker(worker.name) is None))

        def broken(worker: object) -> None:
            raise RuntimeError("a listener's bug")

        runner.add_finished_listener(broken)
        runner.add_finished_listener(listener)
        runner.add_finished_listener(listener)
        await first.end_worker("a")
        await wait_finished(first)
        assert seen == [("a", True)]  # once, after the runner let it go, despite `broken`
        runner.remove_finished_listener(listener)
        await second.end_worker("b")
        await wait_finished(second)
        assert seen == [("a", True)]


async def test_run_returns_when_every_worker_has_finished() -> None:
    runner = WorkerRunner()
    a, b = Probe("a"), Probe("b")
    await runner.add_workers(a, b)
    task = await start_run(runner, "a", "b")
    await a.end_worker("a")
    await wait_finished(a)
    assert not task.done()
    await a.cancel_worker("b")
    await finish(task)
    assert runner.state is RunnerState.FINISHED
    assert not runner.bus.running

    with pytest.raises(InvalidStateError, match="runs once"):
        await runner.start()
    with pytest.raises(InvalidStateError):
        await runner.add_workers(Probe("c"))
    assert runner.get_worker("c") is None


async def test_a_runner_that_is_ending_takes_no_more_workers() -> None:
    refused: list[BaseException] = []

    class Spawner(Probe):
        async def stop(self) -> None:
            try:
                await self.runner.add_workers(Probe("too-late"))
            except InvalidStateError as exc:
                refused.append(exc)
            await super().stop()

    runner = WorkerRunner()
    await runner.add_workers(Spawner("spawner"))
    task = await start_run(runner, "spawner", auto_end=False)
    await runner.end("closing")
    await finish(task)
    assert len(refused) == 1
    assert "ending" in str(refused[0])
    assert runner.get_worker("too-late") is None


async def test_run_without_workers_returns_at_once() -> None:
    runner = WorkerRunner()
    await finish(asyncio.create_task(runner.run()))
    assert runner.state is RunnerState.FINISHED


async def test_run_without_auto_end_runs_until_end() -> None:
    runner = WorkerRunner()
    worker = Probe("w")
    await runner.add_workers(worker)
    task = await start_run(runner, "w", auto_end=False)
    await worker.end_worker("w")
    await wait_finished(worker)
    await runner.add_workers(Probe("again"))  # still running: more workers may come
    assert not task.done()
    await runner.end("enough")
    await finish(task)
    assert runner.state is RunnerState.FINISHED
    assert runner.workers == []


async def test_end_lets_workers_finish_their_queue_cancel_does_not() -> None:
    graceful, abrupt = Probe("graceful"), Probe("abrupt")
    for worker in (graceful, abrupt):
        runner = WorkerRunner()
        await runner.add_workers(worker)
        await runner.start()
        worker.hold()
        for text in ("1", "2", "3"):
            await runner.bus.send(Hello(source="t", target=worker.name, text=text))
        await worker.wait_received(1)
        if worker is graceful:
            ending = asyncio.create_task(runner.end("bye"))
            for _ in range(5):
                await asyncio.sleep(0)
            assert not ending.done(), "end() waits for the worker to finish its queue"
            worker.release()
            await finish(ending)
        else:
            with anyio.fail_after(5):
                await runner.cancel("now")
        assert worker.finished
        assert runner.state is RunnerState.FINISHED
    assert graceful.texts() == ["1", "2", "3"]
    assert abrupt.texts() == ["1"]


async def test_cancelling_run_cancels_the_workers() -> None:
    runner = WorkerRunner()
    worker = Probe("w")
    await runner.add_workers(worker)
    task = await start_run(runner, "w")
    task.cancel()
    with anyio.fail_after(5), pytest.raises(asyncio.CancelledError):
        await task
    assert worker.finished
    assert runner.state is RunnerState.FINISHED
    assert not runner.bus.running


async def test_async_with_cancels_the_workers_on_an_error() -> None:
    runner = WorkerRunner()
    worker = Probe("w")

    async def app() -> None:
        async with runner:
            await runner.add_workers(worker)
            worker.hold()
            await runner.bus.send(Hello(source="t", target="w", text="1"))
            await runner.bus.send(Hello(source="t", target="w", text="2"))
            await worker.wait_received(1)
            raise RuntimeError("app crashed")

    with pytest.raises(RuntimeError, match="app crashed"):
        await app()
    assert worker.finished
    assert worker.texts() == ["1"]
    assert runner.state is RunnerState.FINISHED


async def test_remote_workers_are_registered_by_links_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with running(Probe("local")) as runner:
        registry_message = BusWorkerRegistryMessage(
            source="proxy",
            runner="peer-runner",
            workers=[WorkerRegistryEntry(name="far-1"), WorkerRegistryEntry(name="far-2")],
        )
        mark_origin(registry_message, "link-1")
        await runner.bus.send(registry_message)
        ready = BusWorkerReadyMessage(source="far-3", runner="peer-runner", active=True)
        mark_origin(ready, "link-2")
        await runner.bus.send(ready)
        for name in ("far-1", "far-2", "far-3"):
            await runner.registry.wait_ready(name, timeout=5)
        entry = runner.registry.entry("far-3")
        assert entry is not None
        assert entry.active
        assert runner.registry.get("far-1") == WorkerReadyData("far-1", runner="peer-runner")
        assert not runner.registry.is_local("far-1")
        assert runner.registry.origin_of("far-1") == "link-1"
        assert runner.registry.local_workers == ["local"]
        assert sorted(runner.registry.remote_workers) == ["far-1", "far-2", "far-3"]

        # A link going down takes exactly its own workers away.
        assert sorted(runner.registry.unregister_origin("link-1")) == ["far-1", "far-2"]
        assert "far-1" not in runner.registry
        assert "far-3" in runner.registry
        assert "local" in runner.registry

        # A message sent in this process cannot register a phantom remote worker.
        with caplog.at_level(logging.WARNING, logger="fastapi_busproxy.runner"):
            await runner.bus.send(
                BusWorkerRegistryMessage(
                    source="liar", runner="x", workers=[WorkerRegistryEntry(name="phantom")]
                )
            )
            # Registry messages are handled in order: once "marker" is in, "phantom" was seen.
            marker = BusWorkerRegistryMessage(
                source="proxy", runner="x", workers=[WorkerRegistryEntry(name="marker")]
            )
            mark_origin(marker, "link-2")
            await runner.bus.send(marker)
            await runner.registry.wait_ready("marker", timeout=5)
        assert "phantom" not in runner.registry
        assert any("liar" in r.getMessage() for r in caplog.records)


async def test_a_remote_worker_cannot_shadow_a_local_one() -> None:
    local = Probe("w")
    async with running(local) as runner:
        assert not runner.registry.register_remote(WorkerRegistryEntry(name="w"), origin="link")
        assert runner.registry.is_local("w")
        assert runner.registry.unregister_origin("link") == []
        assert "w" in runner.registry


@pytest.mark.parametrize("target", [None, "test-runner"])
async def test_a_local_end_message_ends_the_runner(target: str | None) -> None:
    runner = WorkerRunner(name="test-runner")
    worker = Probe("w")
    await runner.add_workers(worker)
    task = await start_run(runner, "w", auto_end=False)
    await worker.send_bus_message(BusEndMessage(source="w", target=target, reason="done"))
    await finish(task)
    assert worker.finished
    assert runner.state is RunnerState.FINISHED


async def test_a_local_cancel_message_cancels_the_runner() -> None:
    runner = WorkerRunner()
    worker = Probe("w")
    await runner.add_workers(worker)
    task = await start_run(runner, "w", auto_end=False)
    worker.hold()
    await runner.bus.send(Hello(source="t", target="w", text="1"))
    await runner.bus.send(Hello(source="t", target="w", text="2"))
    await worker.wait_received(1)
    await runner.bus.send(BusCancelMessage(source="t", reason="stop"))
    await finish(task)
    assert worker.finished
    assert worker.texts() == ["1"]


@pytest.mark.parametrize("how", ["runner.end", "runner.cancel", "worker.end", "worker.cancel"])
@pytest.mark.parametrize("where", ["handler", "worker task"])
async def test_a_worker_can_end_the_runner(how: str, where: str) -> None:
    """In a script (the root session), a worker's end() or cancel() ends the whole runner."""

    class Closer(Probe):
        async def on_bus_message(self, message: BusMessage) -> None:
            if isinstance(message, Hello):
                stop = {
                    "runner.end": lambda: self.runner.end(message.text),
                    "runner.cancel": lambda: self.runner.cancel(message.text),
                    "worker.end": lambda: self.end(reason=message.text),
                    "worker.cancel": lambda: self.cancel(reason=message.text),
                }[how]
                if where == "handler":
                    await stop()
                else:
                    self.create_task(stop(), name="closing")
            else:
                await super().on_bus_message(message)

    runner = WorkerRunner()
    closer, other = Closer("closer"), Probe("other")
    await runner.add_workers(closer, other)
    task = await start_run(runner, "closer", "other", auto_end=False)
    await runner.bus.send(Hello(source="t", target="closer", text="all done"))
    await finish(task)
    assert closer.finished
    assert other.finished
    assert runner.state is RunnerState.FINISHED


@pytest.mark.parametrize("kind", [BusEndWorkerMessage, BusCancelWorkerMessage])
async def test_an_end_worker_message_ends_only_that_worker(
    kind: type[BusEndWorkerMessage] | type[BusCancelWorkerMessage],
) -> None:
    a, b = Probe("a"), Probe("b")
    async with running(a, b) as runner:
        await runner.bus.send(kind(source="t", target="a"))
        await wait_finished(a)
        assert not b.finished
        assert runner.state is RunnerState.RUNNING


async def test_an_end_message_from_a_worker_of_the_root_session_ends_the_runner() -> None:
    """``BusEndMessage`` is not addressed to a worker: it ends the session of its source."""
    a, b = Probe("a"), Probe("b")
    runner = WorkerRunner()
    await runner.add_workers(a, b)
    task = await start_run(runner, "a", "b", auto_end=False)
    await a.send_bus_message(BusEndMessage(source="a", target="b", reason="all done"))
    await finish(task)
    assert a.finished
    assert b.finished
    assert runner.state is RunnerState.FINISHED


async def test_end_and_cancel_from_a_remote_peer_are_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker = Probe("w")
    async with running(worker) as runner:
        with caplog.at_level(logging.WARNING, logger="fastapi_busproxy.runner"):
            for message in (
                BusEndMessage(source="peer"),
                BusEndMessage(source="peer", target=runner.name),
                BusCancelMessage(source="peer"),
                BusCancelMessage(source="peer", target=runner.name),
            ):
                mark_origin(message, "link")
                await runner.bus.send(message)
            # Sent after them in both lanes: once both are in, the runner has seen the four.
            for marker, name in (
                (BusWorkerReadyMessage(source="data-marker", runner="peer"), "data-marker"),
                (
                    BusWorkerRegistryMessage(
                        source="proxy",
                        runner="peer",
                        workers=[WorkerRegistryEntry(name="system-marker")],
                    ),
                    "system-marker",
                ),
            ):
                mark_origin(marker, "link")
                await runner.bus.send(marker)
                await runner.registry.wait_ready(name, timeout=5)
        assert runner.state is RunnerState.RUNNING
        assert runner.bus.running
        assert not worker.finished
        ignored = [r for r in caplog.records if "remote peers cannot end" in r.getMessage()]
        assert len(ignored) == 4


async def test_add_worker_message_adds_a_local_worker_only_from_this_process() -> None:
    async with running() as runner:
        remote = BusAddWorkerMessage(source="peer", worker=Probe("smuggled"))
        mark_origin(remote, "link")
        await runner.bus.send(remote)
        await runner.bus.send(BusAddWorkerMessage(source="app", worker=Probe("added")))
        await runner.registry.wait_ready("added", timeout=5)
        assert runner.get_worker("smuggled") is None
        assert "smuggled" not in runner.registry


# -- sessions ----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["worker.end", "session.end", "worker.cancel", "session.cancel"])
async def test_a_session_ends_its_workers_and_not_the_runner(how: str) -> None:
    shared = Probe("shared")
    a, b = Probe("a"), Probe("b")
    async with running(shared) as runner:
        session = runner.new_session("call-1")
        assert isinstance(session, WorkerSession)
        assert not session.root
        await runner.add_workers(a, b, session=session)
        assert a.session is session
        assert runner.session_of("b") is session
        assert runner.session_of("shared") is runner.session
        assert sorted(w.name for w in session.workers) == ["a", "b"]

        a.hold()
        await runner.bus.send(Hello(source="t", target="a", text="1"))
        await a.wait_received(1)
        await runner.bus.send(Hello(source="t", target="a", text="2"))
        if how == "worker.end":
            await a.end(reason="hang up")
        elif how == "worker.cancel":
            await a.cancel(reason="hang up")
        elif how == "session.end":
            await session.end("hang up")
        else:
            await session.cancel("hang up")
        if how.endswith("end"):
            assert not a.finished  # a graceful end lets the queue be handled first
            a.release()
        with anyio.fail_after(5):
            await session.wait()
        assert session.ended
        assert a.finished
        assert b.finished
        assert a.texts() == (["1", "2"] if how.endswith("end") else ["1"])
        assert not shared.finished
        assert runner.state is RunnerState.RUNNING
        assert runner.workers == [shared]
        # Its name is free again once the session has ended.
        assert runner.new_session("call-1").name == "call-1"


async def test_the_end_of_a_finished_session_worker_does_not_end_the_runner() -> None:
    shared, a = Probe("shared"), Probe("a")
    async with running(shared) as runner:
        session = runner.new_session("call")
        await runner.add_workers(a, session=session)
        await session.cancel("the caller left")
        assert a.finished
        await a.end(reason="hang up")  # late: from code outside the worker, say
        # Handled in order by the runner: once the marker is registered, the end was seen.
        marker = BusWorkerReadyMessage(source="marker", runner="peer")
        mark_origin(marker, "link")
        await runner.bus.send(marker)
        ready = asyncio.create_task(runner.registry.wait_ready("marker"))
        ended = asyncio.create_task(shared.wait())
        with anyio.fail_after(5):
            await asyncio.wait({ready, ended}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        ended.cancel()
        await asyncio.wait({ready, ended})
        assert not shared.finished
        assert runner.state is RunnerState.RUNNING


async def test_session_names_are_unique_while_open() -> None:
    async with running(Probe("w")) as runner:
        session = runner.new_session("s")
        await runner.add_workers(Probe("member"), session=session)
        with pytest.raises(ConfigurationError, match="'s'"):
            runner.new_session("s")
        with pytest.raises(ConfigurationError):
            runner.new_session(runner.name)
        assert runner.session.root
        assert runner.session.name == runner.name


async def test_a_child_joins_the_session_of_its_parent() -> None:
    parent, child = Probe("parent"), Probe("child")
    async with running() as runner:
        session = runner.new_session("s")
        await runner.add_workers(parent, session=session)
        await parent.add_workers(child)
        await runner.registry.wait_ready("child", timeout=5)
        assert child.session is session
        await session.end()
        with anyio.fail_after(5):
            await session.wait()
        assert child.finished
        assert runner.state is RunnerState.RUNNING


# -- the registry ------------------------------------------------------------------------------


async def test_the_registry_tells_of_ready_workers_in_both_forms() -> None:
    seen: list[WorkerReadyData] = []
    changed = asyncio.Event()

    async def handler(data: WorkerReadyData) -> None:
        seen.append(data)
        changed.set()

    async with running(Probe("here")) as runner:
        registry = runner.registry
        # The reference's form: async, called at once for a ready worker, idempotent.
        await registry.watch("here", handler)
        assert seen == [WorkerReadyData("here", runner="test-runner")]
        await registry.watch("here", handler)
        assert len(seen) == 1
        # The plain callback form, called synchronously with the registry entry.
        entries: list[WorkerRegistryEntry] = []
        watch = registry.add_watch("there", entries.append)
        await registry.watch("there", handler)
        assert entries == []
        assert len(seen) == 1

        await runner.add_workers(Probe("there"))
        assert [entry.name for entry in entries] == ["there"]
        with anyio.fail_after(5):
            while len(seen) < 2:
                changed.clear()
                await changed.wait()
        assert seen[1] == WorkerReadyData("there", runner="test-runner")

        watch.cancel()
        watch.cancel()  # harmless twice
        registry.unwatch("here", handler)
        registry.unwatch("there", handler)
        assert registry.watcher_count() == 0
        assert registry.local_workers == ["here", "there"]
        assert registry.remote_workers == []
        with pytest.raises(TimeoutError, match="ghost"):
            await registry.wait_ready("ghost", timeout=0.01)
        assert registry.watcher_count() == 0


async def test_a_wait_for_an_unreachable_worker_fails_at_once_until_it_registers() -> None:
    registry = WorkerRegistry("here")
    error = ConnectionError("refused")
    waiting = asyncio.ensure_future(registry.wait_ready("far"))
    await asyncio.sleep(0)  # the waiter is in place
    registry.mark_unreachable("far", error)
    with pytest.raises(WorkerUnreachableError) as caught:
        await waiting
    assert caught.value.__cause__ is error
    with pytest.raises(WorkerUnreachableError):
        await registry.wait_ready("far", 60)  # at once, not after 60 s
    # The link tries again: waits wait again, and a registration answers them.
    registry.clear_unreachable("far")
    again = asyncio.ensure_future(registry.wait_ready("far"))
    await asyncio.sleep(0)
    assert not again.done()
    registry.register_remote(WorkerRegistryEntry(name="far"), origin="link")
    assert (await again).name == "far"
    assert registry.watcher_count() == 0
    # A registered worker is never marked unreachable.
    registry.mark_unreachable("far", error)
    assert (await registry.wait_ready("far")).name == "far"
