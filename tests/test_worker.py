"""BaseWorker on a real InMemoryBus and WorkerRunner: lifecycle, activation, events, watching."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import anyio
import pytest

from fastapi_busproxy import BaseWorker, WorkerState
from fastapi_busproxy.exceptions import (
    ConfigurationError,
    JobFailedError,
    UnknownEventError,
)
from fastapi_busproxy.messages import BusMessage, WorkerRegistryEntry
from tests.core_support import Alert, EventLog, Hello, Probe, running, wait_finished

pytestmark = pytest.mark.anyio


async def test_a_worker_needs_a_name() -> None:
    with pytest.raises(ConfigurationError):
        BaseWorker("")


async def test_an_unattached_worker_has_no_runner() -> None:
    worker = Probe("lonely")
    assert worker.state is WorkerState.CREATED
    with pytest.raises(ConfigurationError, match="add_workers"):
        _ = worker.runner
    with pytest.raises(ConfigurationError):
        await worker.send_bus_message(Hello(source="lonely"))


async def test_lifecycle_start_ready_end_finished() -> None:
    worker = Probe("w")
    events = EventLog(worker)
    async with running() as runner:
        await runner.add_workers(worker)
        assert worker.state is WorkerState.RUNNING
        assert worker.hooks == [("on_start",)]
        assert "w" in runner.registry
        entry = runner.registry.get("w")
        assert entry is not None
        assert entry.active
        assert entry.started_at == worker.started_at
        assert worker.subscription in runner.bus.subscriptions
        await events.wait("on_started")

        await worker.end("done")
        await wait_finished(worker)
        assert worker.state is WorkerState.FINISHED
        assert worker.finished
        assert worker.hooks == [("on_start",), ("on_stop",)]
        await events.wait("on_finished")
        assert "w" not in runner.registry
        assert runner.get_worker("w") is None
        assert worker.subscription not in runner.bus.subscriptions

        await worker.end()  # ending or cancelling a finished worker is harmless
        await worker.cancel()
        # A finished worker does not start again.
        with pytest.raises(ConfigurationError, match="runs once"):
            await runner.add_workers(worker)


async def test_end_handles_the_queued_messages_first() -> None:
    worker = Probe("w")
    async with running(worker):
        worker.hold()
        await worker.bus.send(Hello(source="t", target="w", text="1"))
        await worker.wait_received(1)
        await worker.bus.send(Hello(source="t", target="w", text="2"))
        await worker.bus.send(Hello(source="t", target="w", text="3"))
        await worker.end()
        assert not worker.finished  # end() returns at once
        worker.release()
        await wait_finished(worker)
        assert worker.texts() == ["1", "2", "3"]


async def test_cancel_stops_at_once() -> None:
    worker = Probe("w")
    side_task_cancelled = asyncio.Event()

    async def side_task() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            side_task_cancelled.set()
            raise

    async with running(worker):
        worker.spawn(side_task(), name="side")
        worker.hold()
        await worker.bus.send(Hello(source="t", target="w", text="1"))
        await worker.wait_received(1)
        await worker.bus.send(Hello(source="t", target="w", text="2"))
        with anyio.fail_after(5):
            await worker.cancel("stop now")
        assert worker.finished  # cancel() returns once the worker has finished
        assert side_task_cancelled.is_set()
        assert worker.texts() == ["1"]
        assert len(worker._tasks) == 0


async def test_a_worker_can_end_or_cancel_itself_from_its_handler() -> None:
    class Quitter(BaseWorker):
        async def on_bus_message(self, message: BusMessage) -> None:
            if isinstance(message, Hello):
                if message.text == "end":
                    await self.end()
                else:
                    await self.cancel()
            else:
                await super().on_bus_message(message)

    ender, canceller = Quitter("ender"), Quitter("canceller")
    async with running(ender, canceller) as runner:
        await runner.bus.send(Hello(source="t", target="ender", text="end"))
        await runner.bus.send(Hello(source="t", target="canceller", text="cancel"))
        await wait_finished(ender, canceller)
        assert runner.workers == []


async def test_a_failing_on_start_does_not_leave_the_worker_behind() -> None:
    class Broken(BaseWorker):
        async def on_start(self) -> None:
            raise RuntimeError("cannot start")

    worker = Broken("broken")
    async with running() as runner:
        with pytest.raises(RuntimeError, match="cannot start"):
            await runner.add_workers(worker)
        assert worker.finished
        assert runner.get_worker("broken") is None
        assert "broken" not in runner.registry
        assert runner.bus.subscriptions == [runner._subscription]


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
        entry = runner.registry.get("sleeper")
        assert entry is not None
        assert not entry.active
        await boss.send_bus_message(Hello(source="boss", target="sleeper", text="ignored"))
        await boss.activate_worker("sleeper", {"mode": "fast"})
        # The activation was queued after the Hello: once it is handled, the Hello was too.
        assert await events.wait("on_activated") == [({"mode": "fast"},)]
        assert sleeper.hooks[-1] == ("on_activated", {"mode": "fast"})
        assert sleeper.active
        assert sleeper.received == []
        entry = runner.registry.get("sleeper")
        assert entry is not None
        assert entry.active

        await boss.send_bus_message(Hello(source="boss", target="sleeper", text="heard"))
        await sleeper.wait_received(1)

        await boss.deactivate_worker("sleeper")
        await events.wait("on_deactivated")
        assert sleeper.hooks[-1] == ("on_deactivated",)
        assert not sleeper.active
        await boss.send_bus_message(Hello(source="boss", target="sleeper", text="ignored too"))
        await boss.activate_worker("sleeper")
        assert await events.wait("on_activated", 2) == [({"mode": "fast"},), (None,)]
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


async def test_a_raising_event_handler_is_logged_and_breaks_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker = Probe("w")
    later = asyncio.Event()

    @worker.event_handler("on_activated")
    def broken(w: BaseWorker, args: Any) -> None:
        raise RuntimeError("handler bug")

    @worker.event_handler("on_activated")
    def fine(w: BaseWorker, args: Any) -> None:
        later.set()

    with caplog.at_level(logging.ERROR):
        async with running(worker) as runner:
            await runner.bus.send(Hello(source="t", target="w", text="before"))
            await worker.activate_worker("w")
            with anyio.fail_after(5):
                await later.wait()
            await runner.bus.send(Hello(source="t", target="w", text="after"))
            await worker.wait_received(2)
            assert worker.texts() == ["before", "after"]
            assert worker.state is WorkerState.RUNNING
    [record] = [r for r in caplog.records if r.exc_info]
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


async def test_watch_workers_fires_at_once_for_a_ready_worker_and_later_for_others() -> None:
    watcher = Probe("watcher")
    events = EventLog(watcher)
    async with running(watcher, Probe("early")) as runner:
        watcher.watch_workers("early", "late")
        [(entry,)] = await events.wait("on_worker_ready")
        assert entry.name == "early"

        await runner.add_workers(Probe("late"))
        ready = await events.wait("on_worker_ready", 2)
        assert [args[0].name for args in ready] == ["early", "late"]


async def test_watch_workers_sees_remote_workers_and_their_return() -> None:
    hooked: list[WorkerRegistryEntry] = []

    class Watcher(Probe):
        async def on_start(self) -> None:
            self.watch_workers("far")

        async def on_worker_ready(self, entry: WorkerRegistryEntry) -> None:
            hooked.append(entry)

    watcher = Watcher("watcher")
    events = EventLog(watcher)
    async with running(watcher) as runner:
        runner.registry.register_remote(WorkerRegistryEntry(name="far"), origin="link-1")
        [(entry,)] = await events.wait("on_worker_ready")
        assert entry.name == "far"
        assert runner.registry.origin_of("far") == "link-1"

        # The link goes down and comes back: the watcher hears of it again.
        assert runner.registry.unregister_origin("link-1") == ["far"]
        runner.registry.register_remote(WorkerRegistryEntry(name="far"), origin="link-1")
        await events.wait("on_worker_ready", 2)
        assert [e.name for e in hooked] == ["far", "far"]

        # Watching ends with the worker.
        assert runner.registry.watcher_count() == 1
        await watcher.cancel()
        assert runner.registry.watcher_count() == 0
