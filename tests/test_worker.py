"""BaseWorker on a real InMemoryBus and WorkerRunner: lifecycle, activation, events, watching."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import anyio
import pytest

from fastapi_busproxy import (
    BaseWorker,
    InvalidStateError,
    WorkerActivationArgs,
    WorkerReadyData,
    WorkerState,
    worker_ready,
)
from fastapi_busproxy.exceptions import (
    ConfigurationError,
    JobFailedError,
    UnknownEventError,
)
from fastapi_busproxy.messages import BusMessage, WorkerRegistryEntry
from fastapi_busproxy.runner import RunnerState
from tests.core_support import Alert, EventLog, Hello, Probe, running, wait_finished

pytestmark = pytest.mark.anyio


async def test_a_worker_needs_a_name() -> None:
    with pytest.raises(ConfigurationError):
        BaseWorker("")


async def test_a_worker_without_a_name_gets_a_unique_one() -> None:
    first, second = BaseWorker(), Probe(None)  # type: ignore[arg-type]
    assert re.fullmatch(r"BaseWorker#\d+", first.name)
    assert re.fullmatch(r"Probe#\d+", second.name)
    assert BaseWorker().name != first.name
    async with running(first, second) as runner:
        assert first.name in runner.registry
        assert second.name in runner.registry


async def test_an_unattached_worker_has_no_runner() -> None:
    worker = Probe("lonely")
    assert worker.state is WorkerState.CREATED
    for attribute in ("runner", "worker_runner", "bus", "registry", "session"):
        with pytest.raises(InvalidStateError, match="add_workers"):
            getattr(worker, attribute)
    with pytest.raises(InvalidStateError):
        await worker.send_bus_message(Hello(source="lonely"))
    with pytest.raises(RuntimeError):  # InvalidStateError is a RuntimeError too
        await worker.end()


async def test_lifecycle_start_ready_end_finished() -> None:
    worker = Probe("w")
    events = EventLog(worker)
    async with running() as runner:
        await runner.add_workers(worker)
        assert worker.state is WorkerState.RUNNING
        # Created active: it is activated (without arguments) as it starts.
        assert worker.hooks == [("start",), ("on_activated", None)]
        assert await events.wait("on_activated") == [(None,)]
        assert worker.active
        assert "w" in runner.registry
        assert runner.registry.get("w") == WorkerReadyData(worker_name="w", runner="test-runner")
        entry = runner.registry.entry("w")
        assert entry is not None
        assert entry.active
        assert entry.started_at == worker.started_at
        assert worker.subscription in runner.bus.subscriptions
        await events.wait("on_started")

        # A worker ends only itself with an end request addressed to its own name.
        await worker.end_worker("w", "done")
        await wait_finished(worker)
        assert worker.state is WorkerState.FINISHED
        assert worker.finished
        assert worker.hooks[-1] == ("stop",)
        await events.wait("on_finished")
        assert "w" not in runner.registry
        assert runner.get_worker("w") is None
        assert worker.subscription not in runner.bus.subscriptions
        assert runner.state is RunnerState.RUNNING

        # Ending or cancelling a finished worker is harmless.
        await worker._request_end("again")
        await worker._cancel_now("again")
        assert runner.state is RunnerState.RUNNING
        # A finished worker does not start again.
        with pytest.raises(InvalidStateError, match="runs once"):
            await runner.add_workers(worker)
        assert runner.get_worker("w") is None


async def test_start_override_runs_around_readiness() -> None:
    seen: list[tuple[str, WorkerState, bool]] = []

    class Staged(BaseWorker):
        async def start(self) -> None:
            seen.append(("before", self.state, self.name in self.registry))
            await super().start()
            seen.append(("after", self.state, self.name in self.registry))

        async def stop(self) -> None:
            seen.append(("stop", self.state, self.name in self.registry))
            await super().stop()

    worker = Staged("staged")
    async with running(worker):
        assert seen == [
            ("before", WorkerState.STARTING, False),
            ("after", WorkerState.RUNNING, True),
        ]
        await worker.end_worker("staged")
        await wait_finished(worker)
    assert seen[2:] == [("stop", WorkerState.ENDING, True)]
    assert len(seen) == 3


async def test_end_handles_the_queued_messages_first() -> None:
    worker = Probe("w")
    boss = Probe("boss")
    async with running(worker, boss) as runner:
        worker.hold()
        await worker.bus.send(Hello(source="t", target="w", text="1"))
        await worker.wait_received(1)
        await worker.bus.send(Hello(source="t", target="w", text="2"))
        await worker.bus.send(Hello(source="t", target="w", text="3"))
        await boss.end_worker("w")
        assert not worker.finished  # end_worker() returns at once
        worker.release()
        await wait_finished(worker)
        assert worker.texts() == ["1", "2", "3"]
        assert not boss.finished
        assert runner.state is RunnerState.RUNNING


async def test_stop_called_from_outside_stops_the_worker_at_once() -> None:
    worker, bystander = Probe("w"), Probe("bystander")
    side_task_cancelled = asyncio.Event()

    async def side_task() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            side_task_cancelled.set()
            raise

    async with running(worker, bystander) as runner:
        worker.create_task(side_task())
        worker.hold()
        await worker.bus.send(Hello(source="t", target="w", text="1"))
        await worker.wait_received(1)
        await worker.bus.send(Hello(source="t", target="w", text="2"))
        with anyio.fail_after(5):
            await worker.stop()
        assert worker.finished  # stop() returns once the worker has finished
        assert side_task_cancelled.is_set()
        assert worker.texts() == ["1"]
        assert len(worker._tasks) == 0
        assert "w" not in runner.registry
        assert not bystander.finished
        assert runner.state is RunnerState.RUNNING


@pytest.mark.parametrize("how", ["end", "cancel"])
async def test_a_worker_can_end_or_cancel_only_itself_from_its_handler(how: str) -> None:
    class Quitter(BaseWorker):
        async def on_bus_message(self, message: BusMessage) -> None:
            if isinstance(message, Hello):
                if how == "end":
                    await self.end_worker(self.name)
                else:
                    await self.cancel_worker(self.name)
            else:
                await super().on_bus_message(message)

    quitter, bystander = Quitter("quitter"), Probe("bystander")
    async with running(quitter, bystander) as runner:
        await runner.bus.send(Hello(source="t", target="quitter"))
        await wait_finished(quitter)
        assert runner.workers == [bystander]
        assert runner.state is RunnerState.RUNNING


@pytest.mark.parametrize("where", ["before readiness", "once ready"])
async def test_a_failing_start_does_not_leave_the_worker_behind(where: str) -> None:
    class Broken(BaseWorker):
        async def start(self) -> None:
            if where == "once ready":
                await super().start()
            raise RuntimeError("cannot start")

    worker = Broken("broken")
    errors: list[BaseException] = []
    async with running() as runner:

        @runner.event_handler("on_error")
        def failed(runner: Any, error: BaseException) -> None:
            errors.append(error)

        with pytest.raises(RuntimeError, match="cannot start"):
            await runner.add_workers(worker)
        assert worker.finished
        assert runner.get_worker("broken") is None
        assert "broken" not in runner.registry
        assert runner.bus.subscriptions == [runner._subscription]
        assert [str(error) for error in errors] == ["cannot start"]
        assert runner.state is RunnerState.RUNNING


async def test_workers_talk_over_the_bus() -> None:
    class Greeter(BaseWorker):
        async def on_bus_message(self, message: BusMessage) -> None:
            if isinstance(message, Hello):
                reply = Hello(source=self.name, target=message.source, text=f"hi {message.text}")
                await self.send_bus_message(reply)
            else:
                await super().on_bus_message(message)

    probe = Probe("probe")
    async with running(Greeter("greeter"), probe):
        await probe.send_bus_message(Hello(source="probe", target="greeter", text="probe"))
        await probe.wait_received(1)
        assert probe.texts() == ["hi probe"]
        assert probe.received[0].source == "greeter"


async def test_activation_and_deactivation() -> None:
    sleeper = Probe("sleeper", active=False)
    boss = Probe("boss")
    events = EventLog(sleeper)
    async with running(sleeper, boss) as runner:
        assert sleeper.hooks == [("start",)]  # created inactive: not activated at start
        entry = runner.registry.entry("sleeper")
        assert entry is not None
        assert not entry.active
        assert sleeper.activation_args is None
        await boss.send_bus_message(Hello(source="boss", target="sleeper", text="ignored"))
        await boss.activate_worker("sleeper", args={"mode": "fast"})
        # The activation was queued after the Hello: once it is handled, the Hello was too.
        assert await events.wait("on_activated") == [({"mode": "fast"},)]
        assert sleeper.hooks[-1] == ("on_activated", {"mode": "fast"})
        assert sleeper.active
        assert sleeper.activation_args == {"mode": "fast"}
        assert sleeper.received == []
        entry = runner.registry.entry("sleeper")
        assert entry is not None
        assert entry.active

        await boss.send_bus_message(Hello(source="boss", target="sleeper", text="heard"))
        await sleeper.wait_received(1)

        await boss.deactivate_worker("sleeper")
        await events.wait("on_deactivated")
        assert sleeper.hooks[-1] == ("on_deactivated",)
        assert not sleeper.active
        assert sleeper.activation_args is None
        await boss.send_bus_message(Hello(source="boss", target="sleeper", text="ignored too"))
        # Typed arguments travel as the dict of their fields that are set.
        await boss.activate_worker(
            "sleeper", args=WorkerActivationArgs(metadata={"call": 7}), deactivate_self=True
        )
        assert not boss.active  # deactivate_self: never both active at once
        activations = await events.wait("on_activated", 2)
        assert activations == [({"mode": "fast"},), ({"metadata": {"call": 7}},)]
        assert WorkerActivationArgs.from_dict(activations[1][0]).metadata == {"call": 7}
        assert sleeper.texts() == ["heard"]


async def test_an_inactive_worker_still_takes_system_messages() -> None:
    sleeper = Probe("sleeper", active=False)
    async with running(sleeper) as runner:
        await runner.bus.send(Alert(source="t", target="sleeper", text="wake"))
        await sleeper.wait_received(1)
        assert not sleeper.active


async def test_an_inactive_worker_refuses_jobs_with_status_error() -> None:
    class Server(BaseWorker):
        async def on_job_request(self, message: Any) -> dict[str, Any]:
            return {"served": True}

    client = Probe("client")
    async with running(Server("server", active=False), client):
        with anyio.fail_after(5), pytest.raises(JobFailedError) as caught:
            async with client.job("server"):
                pass
        assert caught.value.status == "error"
        assert caught.value.response is not None
        assert "not active" in str(caught.value.response["error"])


@pytest.mark.parametrize("how", ["end", "cancel"])
async def test_an_inactive_worker_obeys_end_and_cancel(how: str) -> None:
    sleeper = Probe("sleeper", active=False)
    boss = Probe("boss")
    async with running(sleeper, boss):
        if how == "end":
            await boss.end_worker("sleeper", "bye")
        else:
            await boss.cancel_worker("sleeper", "bye")
        await wait_finished(sleeper)
        assert not boss.finished


async def test_unknown_event_names_are_refused() -> None:
    worker = Probe("w")
    with pytest.raises(UnknownEventError, match="on_strated"):

        @worker.event_handler("on_strated")
        def typo(worker: BaseWorker) -> None:
            pass

    with pytest.raises(UnknownEventError):
        worker.add_event_handler("on_job_done", lambda w: None)
    assert not worker.has_event_handlers("on_strated")


async def test_event_handlers_sync_and_async_with_the_worker_first() -> None:
    worker = Probe("w")
    calls: list[tuple[str, Any]] = []
    done = asyncio.Event()

    @worker.event_handler("on_started")
    def sync_handler(w: BaseWorker) -> None:
        calls.append(("sync", w))

    @worker.event_handler("on_started")
    async def async_handler(w: BaseWorker) -> None:
        await asyncio.sleep(0)
        calls.append(("async", w))
        done.set()

    async with running(worker):
        with anyio.fail_after(5):
            await done.wait()
    assert calls == [("sync", worker), ("async", worker)]


async def test_event_handlers_run_in_tasks_of_their_own() -> None:
    """A handler may wait for a message to its own worker: it does not hold up delivery."""
    sleeper = Probe("sleeper", active=False)
    heard = asyncio.Event()

    @sleeper.event_handler("on_activated")
    async def wait_for_a_hello(w: Probe, args: Any) -> None:
        await w.wait_received(1)
        heard.set()

    async with running(sleeper) as runner:
        await runner.bus.send(Alert(source="t", target="sleeper", text="wake"))  # system lane
        await sleeper.wait_received(1)
        sleeper.received.clear()
        await sleeper.activate_worker("sleeper")
        await runner.bus.send(Hello(source="t", target="sleeper", text="after"))
        with anyio.fail_after(5):
            await heard.wait()
        assert sleeper.texts() == ["after"]


async def test_a_removed_event_handler_is_not_called() -> None:
    worker = Probe("w", active=False)
    removed_calls: list[Any] = []
    kept = asyncio.Event()

    def removed(w: BaseWorker, args: Any) -> None:
        removed_calls.append(args)

    def still_there(w: BaseWorker, args: Any) -> None:
        kept.set()

    worker.add_event_handler("on_activated", removed)
    worker.add_event_handler("on_activated", still_there)
    worker.remove_event_handler("on_activated", removed)
    worker.remove_event_handler("on_activated", removed)  # removing twice is harmless
    async with running(worker):
        await worker.activate_worker("w")
        with anyio.fail_after(5):
            await kept.wait()
    assert removed_calls == []


async def test_a_raising_event_handler_is_logged_and_breaks_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker = Probe("w")
    activations = 0
    changed = asyncio.Event()

    @worker.event_handler("on_activated")
    def broken(w: BaseWorker, args: Any) -> None:
        raise RuntimeError("handler bug")

    @worker.event_handler("on_activated")
    def fine(w: BaseWorker, args: Any) -> None:
        nonlocal activations
        activations += 1
        changed.set()

    with caplog.at_level(logging.ERROR):
        async with running(worker) as runner:
            await runner.bus.send(Hello(source="t", target="w", text="before"))
            await worker.activate_worker("w")
            with anyio.fail_after(5):
                while activations < 2:  # at start (created active), then the activation
                    changed.clear()
                    await changed.wait()
            await runner.bus.send(Hello(source="t", target="w", text="after"))
            await worker.wait_received(2)
            assert worker.texts() == ["before", "after"]
            assert worker.state is WorkerState.RUNNING
    records = [r for r in caplog.records if r.exc_info]
    assert len(records) == 2
    for record in records:
        assert isinstance(record.exc_info and record.exc_info[1], RuntimeError)
        assert "on_activated" in record.getMessage()
        assert "'w'" in record.getMessage()


async def test_a_raising_message_handler_is_logged_and_the_worker_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Fragile(Probe):
        async def on_bus_message(self, message: BusMessage) -> None:
            if isinstance(message, Hello) and message.text == "bad":
                raise ValueError("cannot handle it")
            await super().on_bus_message(message)

    worker = Fragile("fragile")
    with caplog.at_level(logging.ERROR):
        async with running(worker) as runner:
            await runner.bus.send(Hello(source="t", target="fragile", text="bad"))
            await runner.bus.send(Hello(source="t", target="fragile", text="good"))
            await worker.wait_received(1)
            assert worker.texts() == ["good"]
    assert any("fragile" in r.getMessage() for r in caplog.records if r.exc_info)


async def test_create_task_and_cancel_task() -> None:
    worker = Probe("w")
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    async with running(worker):
        task = worker.create_task(forever())
        assert task.get_name().endswith("forever")
        with anyio.fail_after(5):
            await started.wait()
        assert len(worker._tasks) == 1
        await worker.cancel_task(task)
        assert task.cancelled()
        assert len(worker._tasks) == 0


async def test_watch_workers_fires_at_once_for_a_ready_worker_and_later_for_others() -> None:
    watcher = Probe("watcher")
    events = EventLog(watcher)
    async with running(watcher, Probe("early")) as runner:
        await watcher.watch_workers("early", "late")
        [(data,)] = await events.wait("on_worker_ready")
        assert data == WorkerReadyData(worker_name="early", runner="test-runner")

        await watcher.watch_workers("early")  # watching again does not fire again
        await runner.add_workers(Probe("late"))
        ready = await events.wait("on_worker_ready", 2)
        assert [args[0].worker_name for args in ready] == ["early", "late"]


async def test_watch_workers_sees_remote_workers_and_their_return() -> None:
    hooked: list[tuple[str, WorkerReadyData]] = []

    class Watcher(Probe):
        @worker_ready(name="far")
        async def far_is_ready(self, data: WorkerReadyData) -> None:
            hooked.append(("decorated", data))

        async def on_worker_ready(self, data: WorkerReadyData) -> None:
            hooked.append(("hook", data))

    watcher = Watcher("watcher")
    events = EventLog(watcher)
    far = WorkerReadyData(worker_name="far", runner="peer-runner")
    async with running(watcher) as runner:
        assert runner.registry.watcher_count() == 1  # @worker_ready watches from the start
        runner.registry.register_remote(
            WorkerRegistryEntry(name="far"), origin="link-1", runner="peer-runner"
        )
        [(data,)] = await events.wait("on_worker_ready")
        assert data == far
        assert hooked == [("decorated", far), ("hook", far)]
        assert runner.registry.origin_of("far") == "link-1"

        # The link goes down and comes back: the watcher hears of it again.
        assert runner.registry.unregister_origin("link-1") == ["far"]
        runner.registry.register_remote(
            WorkerRegistryEntry(name="far"), origin="link-1", runner="peer-runner"
        )
        await events.wait("on_worker_ready", 2)
        assert hooked == [("decorated", far), ("hook", far)] * 2

        # Watching ends with the worker.
        assert runner.registry.watcher_count() == 1
        await watcher.stop()
        assert runner.registry.watcher_count() == 0


async def test_two_worker_ready_handlers_for_one_name_are_refused() -> None:
    class Confused(BaseWorker):
        @worker_ready(name="far")
        async def one(self, data: WorkerReadyData) -> None:
            pass

        @worker_ready(name="far")
        async def two(self, data: WorkerReadyData) -> None:
            pass

    with pytest.raises(ConfigurationError, match="far"):
        Confused("confused")


async def test_a_child_worker_ends_with_its_parent_and_reports_its_errors() -> None:
    parent, child = Probe("parent"), Probe("child")
    events = EventLog(parent)
    async with running(parent) as runner:
        await parent.add_workers(child)
        [(data,)] = await events.wait("on_worker_ready")  # children are watched
        assert data.worker_name == "child"
        assert child.parent == "parent"
        assert parent.children == [child]

        await child.send_bus_error_message("lost the backend")
        [(error,)] = await events.wait("on_worker_failed")
        assert (error.worker_name, error.error) == ("child", "lost the backend")

        await parent.end_worker("parent")
        await wait_finished(parent, child)
        assert runner.workers == []
