"""Jobs between workers on a real bus: answers, updates, streams, cancellation, timeouts, leaks."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import anyio
import pytest

from fastapi_busproxy import (
    BaseWorker,
    JobEvent,
    JobGroupError,
    JobGroupEvent,
    JobGroupParams,
    JobGroupResponse,
    JobParams,
    WorkerNotReadyError,
    WorkerRunner,
    job,
)
from fastapi_busproxy.exceptions import (
    ConfigurationError,
    InvalidStateError,
    JobCancelledError,
    JobError,
    JobFailedError,
    JobTimeoutError,
)
from fastapi_busproxy.messages import (
    BusJobCancelMessage,
    BusJobRequestMessage,
    BusJobResponseMessage,
    BusJobResponseUrgentMessage,
    BusJobUpdateRequestMessage,
    BusMessage,
    JobStatus,
    WorkerRegistryEntry,
)
from tests.core_support import Probe, assert_no_leaks, running

pytestmark = pytest.mark.anyio


class Server(BaseWorker):
    """Serves jobs by name; ``block`` runs until cancelled and says so."""

    def __init__(self, name: str, *, active: bool = True) -> None:
        super().__init__(name, active=active)
        self.blocking = asyncio.Event()
        self.cancelled: list[str] = []
        self.cancelled_event = asyncio.Event()
        self.cancel_hooks: list[str] = []
        self.update_requests: list[str] = []
        self.cancellations_over = 0
        self.add_event_handler("on_job_cancelled", self._cancellation_over)

    def _cancellation_over(self, worker: BaseWorker, message: BusJobCancelMessage) -> None:
        # The event fires once the hook has run and the requester has been answered.
        self.cancellations_over += 1
        self.cancelled_event.set()

    async def on_job_request(self, message: BusJobRequestMessage) -> dict[str, Any] | None:
        job_id, payload = message.job_id, message.payload or {}
        if message.job_name == "echo":
            return {"echo": payload, "from": message.source}
        if message.job_name == "progress":
            steps = payload.get("steps", 2)
            for step in range(steps):
                await self.send_job_update(job_id, {"step": step})
            await self.send_job_stream_start(job_id, {"chunks": 3})
            for chunk in range(3):
                await self.send_job_stream_data(job_id, {"chunk": chunk})
            # The end of the stream answers the job: its data is the response.
            await self.send_job_stream_end(job_id, {"total": steps})
            return None
        if message.job_name == "fail":
            await self.send_job_response(job_id, {"why": "no luck"}, status="failed")
            return None
        if message.job_name == "raise":
            raise ValueError("boom")
        if message.job_name == "refuse":
            await self.send_job_response(job_id, None, status=JobStatus.CANCELLED)
            return None
        if message.job_name == "not a dict":
            return ["a", "list"]  # type: ignore[return-value]
        if message.job_name == "urgent":
            await self.send_job_response(job_id, {"fast": True}, urgent=True)
            return None
        if message.job_name == "block":
            try:
                self.blocking.set()
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.append(job_id)
                self.cancelled_event.set()
                raise
        raise AssertionError(f"unexpected job {message.job_name!r}")

    async def on_job_update_requested(self, message: BusJobUpdateRequestMessage) -> None:
        self.update_requests.append(message.job_id)
        await self.send_job_update(message.job_id, {"asked": len(self.update_requests)})

    async def on_job_cancelled(self, message: BusJobCancelMessage) -> None:
        self.cancel_hooks.append(message.job_id)

    async def wait_blocking(self) -> None:
        with anyio.fail_after(5):
            await self.blocking.wait()
        self.blocking.clear()

    async def wait_cancelled(self, count: int = 1) -> None:
        """Wait until ``count`` jobs were cancelled by their requester and answered so."""
        with anyio.fail_after(5):
            while len(self.cancelled) < count or self.cancellations_over < count:
                self.cancelled_event.clear()
                await self.cancelled_event.wait()


class Client(BaseWorker):
    """Records the requester-side hooks: ``await client.wait_for("on_job_completed")``."""

    HOOKS = (
        "on_job_response",
        "on_job_completed",
        "on_job_error",
        "on_job_update",
        "on_job_stream_start",
        "on_job_stream_data",
        "on_job_stream_end",
    )

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.hooked: list[tuple[str, Any]] = []
        self._changed = asyncio.Event()

    def _record(self, hook: str, value: Any) -> None:
        self.hooked.append((hook, value))
        self._changed.set()

    def of(self, hook: str) -> list[Any]:
        return [value for name, value in self.hooked if name == hook]

    async def wait_for(self, hook: str, count: int = 1) -> list[Any]:
        with anyio.fail_after(5):
            while len(self.of(hook)) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.of(hook)

    @property
    def responses(self) -> list[BusJobResponseMessage | BusJobResponseUrgentMessage]:
        return self.of("on_job_response")

    async def on_job_response(self, message: Any) -> None:
        self._record("on_job_response", message)

    async def on_job_completed(self, result: JobGroupResponse) -> None:
        self._record("on_job_completed", result)

    async def on_job_error(self, message: Any) -> None:
        self._record("on_job_error", message)

    async def on_job_update(self, message: Any) -> None:
        self._record("on_job_update", message)

    async def on_job_stream_start(self, message: Any) -> None:
        self._record("on_job_stream_start", message)

    async def on_job_stream_data(self, message: Any) -> None:
        self._record("on_job_stream_data", message)

    async def on_job_stream_end(self, message: Any) -> None:
        self._record("on_job_stream_end", message)


def watch_readiness_waits(runner: WorkerRunner) -> asyncio.Event:
    """An event set when a job starts waiting for its target to be ready."""
    waiting = asyncio.Event()
    wait_ready = runner.registry.wait_ready

    async def recording(name: str, *args: Any) -> Any:
        waiting.set()
        return await wait_ready(name, *args)

    runner.registry.wait_ready = recording  # type: ignore[method-assign]
    return waiting


# -- answers -----------------------------------------------------------------------------------


async def test_job_round_trip() -> None:
    server, client = Server("server"), Client("client")
    async with running(server, client) as runner:
        with anyio.fail_after(5):
            async with client.job("server", name="echo", payload={"q": 1}) as job:
                assert client.job_groups[job.job_id] is job.group
                assert job.group.worker_names == ["server"]
                assert job.status is None
                assert job.response == {}
        assert job.status is JobStatus.COMPLETED
        assert job.response == {"echo": {"q": 1}, "from": "client"}
        assert job.job_id not in client.job_groups
        [completed] = client.of("on_job_completed")
        assert completed == JobGroupResponse(job.job_id, {"server": job.response})

        # The same job asked with a params object.
        with anyio.fail_after(5):
            params = JobParams(name="echo", payload={"q": 2}, timeout=5)
            async with client.job("server", params=params) as job:
                pass
        assert job.response == {"echo": {"q": 2}, "from": "client"}
        with pytest.raises(TypeError, match="either params or"):
            client.job("server", params=params, name="echo")
        await assert_no_leaks(runner, server, client)


async def test_updates_and_stream_arrive_in_order_and_the_stream_end_is_the_response() -> None:
    server, client = Server("server"), Client("client")
    async with running(server, client) as runner:
        events: list[JobEvent] = []
        with anyio.fail_after(5):
            async with client.job("server", name="progress", payload={"steps": 2}) as job:
                async for event in job:
                    events.append(event)
        assert [(event.type, event.data) for event in events] == [
            (JobEvent.UPDATE, {"step": 0}),
            (JobEvent.UPDATE, {"step": 1}),
            (JobEvent.STREAM_START, {"chunks": 3}),
            (JobEvent.STREAM_DATA, {"chunk": 0}),
            (JobEvent.STREAM_DATA, {"chunk": 1}),
            (JobEvent.STREAM_DATA, {"chunk": 2}),
            (JobEvent.STREAM_END, {"total": 2}),
        ]
        assert job.status is JobStatus.COMPLETED
        assert job.response == {"total": 2}
        await assert_no_leaks(runner, server, client)


async def test_a_reader_that_falls_behind_loses_the_oldest_events(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class SmallBuffer(Client):
        job_event_buffer = 3

    server, client = Server("server"), SmallBuffer("client")
    with caplog.at_level(logging.WARNING, logger="fastapi_busproxy.jobs"):
        async with running(server, client) as runner:
            with anyio.fail_after(5):
                async with client.job("server", name="progress", payload={"steps": 10}) as job:
                    await job.group.wait()  # not reading: 15 events arrive for a buffer of 3
                    kept = [event async for event in job]
            await assert_no_leaks(runner, server, client)
    assert [event.type for event in kept] == [
        JobEvent.STREAM_DATA,
        JobEvent.STREAM_DATA,
        JobEvent.STREAM_END,
    ]
    assert job.group.dropped_events == 12
    assert job.response == {"total": 10}
    assert any("dropped" in r.getMessage() for r in caplog.records)


async def test_request_job_answers_reach_the_hooks() -> None:
    server, client = Server("server"), Client("client")
    async with running(server, client) as runner:
        job_id = await client.request_job("server", name="echo", payload={"n": 2})
        [completed] = await client.wait_for("on_job_completed")
        assert completed == JobGroupResponse(
            job_id, {"server": {"echo": {"n": 2}, "from": "client"}}
        )
        [answer] = client.responses
        assert answer.job_id == job_id
        assert answer.status is JobStatus.COMPLETED
        assert answer.response == {"echo": {"n": 2}, "from": "client"}
        assert job_id not in client.job_groups

        # Updates and streams of a job asked this way reach their hooks too.
        job_id = await client.request_job("server", name="progress", payload={"steps": 1})
        [_, completed] = await client.wait_for("on_job_completed", 2)
        assert completed == JobGroupResponse(job_id, {"server": {"total": 1}})
        assert [m.update for m in client.of("on_job_update")] == [{"step": 0}]
        assert [m.data for m in client.of("on_job_stream_start")] == [{"chunks": 3}]
        assert len(client.of("on_job_stream_data")) == 3
        assert [m.data for m in client.of("on_job_stream_end")] == [{"total": 1}]
        assert client.of("on_job_error") == []
        await assert_no_leaks(runner, server, client)


async def test_urgent_response() -> None:
    server, client = Server("server"), Client("client")
    async with running(server, client) as runner:
        with anyio.fail_after(5):
            async with client.job("server", name="urgent") as job:
                pass
        assert job.response == {"fast": True}
        assert isinstance(client.responses[0], BusJobResponseUrgentMessage)
        await assert_no_leaks(runner, server, client)


@pytest.mark.parametrize(
    ("job_name", "status", "response"),
    [
        ("fail", "failed", {"why": "no luck"}),
        ("raise", "error", {"error": "boom"}),
        ("not a dict", "error", {"error": "invalid job result"}),
    ],
)
async def test_a_job_that_does_not_complete_raises_job_failed(
    job_name: str, status: str, response: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    server, client = Server("server"), Client("client")
    with caplog.at_level(logging.ERROR):
        async with running(server, client) as runner:
            with anyio.fail_after(5), pytest.raises(JobFailedError) as caught:
                async with client.job("server", name=job_name) as job:
                    pass
            await assert_no_leaks(runner, server, client)
    assert isinstance(caught.value, JobError)
    assert caught.value.status == status
    assert caught.value.response == response
    assert caught.value.job_id == job.job_id
    assert job.status is JobStatus(status)
    assert job.response == response
    [error] = client.of("on_job_error")
    assert (error.job_id, error.status) == (job.job_id, JobStatus(status))
    assert client.of("on_job_completed") == []
    if job_name == "raise":  # the server logs the failure of its own job
        assert any(r.exc_info and "server" in r.getMessage() for r in caplog.records)


async def test_a_worker_that_serves_no_jobs_answers_error() -> None:
    client = Client("client")
    async with running(Probe("plain"), client):
        with anyio.fail_after(5), pytest.raises(JobFailedError, match="does not serve jobs"):
            async with client.job("plain"):
                pass


async def test_the_server_answering_cancelled_completes_the_job_as_cancelled() -> None:
    """As in the reference, a ``cancelled`` answer of the serving side is an answer, not an
    error: the block ends normally and the status says what happened."""
    server, client = Server("server"), Client("client")
    async with running(server, client) as runner:
        with anyio.fail_after(5):
            async with client.job("server", name="refuse") as job:
                pass
        assert job.status is JobStatus.CANCELLED
        assert job.response == {}
        [completed] = client.of("on_job_completed")
        assert completed.responses == {"server": {}}
        await assert_no_leaks(runner, server, client)


async def test_a_job_left_open_is_answered_later() -> None:
    """A handler that returns None leaves the job open, to be answered from anywhere."""

    class Deferred(BaseWorker):
        def __init__(self, name: str) -> None:
            super().__init__(name)
            self.arrived = asyncio.Event()

        async def on_job_request(self, message: BusJobRequestMessage) -> None:
            self.arrived.set()
            return None

    server, client = Deferred("server"), Client("client")
    async with running(server, client) as runner:
        with anyio.fail_after(5):
            async with client.job("server", name="later", payload={"x": 1}) as job:
                await server.arrived.wait()
                assert list(server.active_jobs) == [job.job_id]
                request = server.active_jobs[job.job_id]
                assert (request.source, request.job_name, request.payload) == (
                    "client",
                    "later",
                    {"x": 1},
                )
                assert not job.group.is_done
                await server.send_job_update(job.job_id, {"working": True})
                await server.send_job_response(job.job_id, {"done": True})
                events = [event async for event in job]
        assert events == [JobEvent(JobEvent.UPDATE, {"working": True})]
        assert job.response == {"done": True}
        assert server.active_jobs == {}
        await assert_no_leaks(runner, server, client)


async def test_an_on_job_request_event_handler_serves_jobs() -> None:
    plain = BaseWorker("plain")

    @plain.event_handler("on_job_request")
    async def serve(worker: BaseWorker, message: BusJobRequestMessage) -> None:
        await worker.send_job_response(message.job_id, {"by": "event handler"})

    client = Client("client")
    async with running(plain, client) as runner:
        with anyio.fail_after(5):
            async with client.job("plain") as job:
                pass
        assert job.response == {"by": "event handler"}
        await assert_no_leaks(runner, plain, client)


async def test_job_handlers_by_name_and_sequential_ones_one_at_a_time() -> None:
    class Writer(BaseWorker):
        def __init__(self, name: str) -> None:
            super().__init__(name)
            self.log: list[tuple[str, int]] = []
            self.gates = {0: asyncio.Event(), 1: asyncio.Event()}
            self.started = asyncio.Event()

        @job(name="draft", sequential=True)
        async def draft(self, message: BusJobRequestMessage) -> dict[str, Any]:
            n = (message.payload or {})["n"]
            self.log.append(("start", n))
            self.started.set()
            await self.gates[n].wait()
            self.log.append(("end", n))
            return {"n": n}

        @job(name="shout")
        async def shout(self, message: BusJobRequestMessage) -> dict[str, Any]:
            return {"text": str((message.payload or {})["text"]).upper()}

    writer, client = Writer("writer"), Client("client")
    received = 0
    both_received = asyncio.Event()

    @writer.event_handler("on_job_request")
    def count(worker: BaseWorker, message: BusJobRequestMessage) -> None:
        nonlocal received
        if message.job_name == "draft":
            received += 1
            if received == 2:
                both_received.set()

    async def draft(n: int) -> dict[str, Any]:
        async with client.job("writer", name="draft", payload={"n": n}) as drafted:
            pass
        return drafted.response

    async with running(writer, client) as runner:
        with anyio.fail_after(5):
            async with client.job("writer", name="shout", payload={"text": "hi"}) as shouted:
                pass
            assert shouted.response == {"text": "HI"}

            first = asyncio.create_task(draft(0))
            await writer.started.wait()
            second = asyncio.create_task(draft(1))
            await both_received.wait()
            # The second request has arrived, and waits for the first to be answered.
            assert writer.log == [("start", 0)]
            writer.gates[1].set()
            writer.gates[0].set()
            assert await first == {"n": 0}
            assert await second == {"n": 1}
        assert writer.log == [("start", 0), ("end", 0), ("start", 1), ("end", 1)]
        await assert_no_leaks(runner, writer, client)


async def test_two_job_handlers_for_one_name_are_refused() -> None:
    class Confused(BaseWorker):
        @job(name="draft")
        async def one(self, message: BusJobRequestMessage) -> None:
            pass

        @job(name="draft")
        async def two(self, message: BusJobRequestMessage) -> None:
            pass

    with pytest.raises(ConfigurationError, match="draft"):
        Confused("confused")


# -- job groups --------------------------------------------------------------------------------


class Raiser(BaseWorker):
    async def on_job_request(self, message: BusJobRequestMessage) -> dict[str, Any]:
        raise ValueError(f"{self.name} cannot")


async def test_a_job_group_collects_every_answer_and_event() -> None:
    a, b, client = Server("a"), Server("b"), Client("client")
    async with running(a, b, client) as runner:
        events: list[JobGroupEvent] = []
        with anyio.fail_after(5):
            async with client.job_group("a", "b", name="progress", payload={"steps": 1}) as group:
                async for event in group:
                    events.append(event)
        assert group.responses == {"a": {"total": 1}, "b": {"total": 1}}
        for name in ("a", "b"):
            mine = [(event.type, event.data) for event in events if event.worker_name == name]
            assert mine == [
                (JobGroupEvent.UPDATE, {"step": 0}),
                (JobGroupEvent.STREAM_START, {"chunks": 3}),
                (JobGroupEvent.STREAM_DATA, {"chunk": 0}),
                (JobGroupEvent.STREAM_DATA, {"chunk": 1}),
                (JobGroupEvent.STREAM_DATA, {"chunk": 2}),
                (JobGroupEvent.STREAM_END, {"total": 1}),
            ]

        # Fire and forget: one on_job_completed once both have answered.
        job_id = await client.request_job_group("a", "b", name="echo", payload={"k": 1})
        await client.wait_for("on_job_completed", 2)  # the block's group, then this one
        results = [r for r in client.of("on_job_completed") if r.job_id == job_id]
        assert results == [
            JobGroupResponse(
                job_id,
                {
                    "a": {"echo": {"k": 1}, "from": "client"},
                    "b": {"echo": {"k": 1}, "from": "client"},
                },
            )
        ]
        await assert_no_leaks(runner, a, b, client)


async def test_a_failing_member_fails_the_group_unless_told_otherwise() -> None:
    good, bad, client = Server("good"), Raiser("bad"), Client("client")
    async with running(good, bad, client) as runner:
        with anyio.fail_after(5), pytest.raises(JobGroupError) as caught:
            async with client.job_group("good", "bad", name="echo"):
                pass
        assert caught.value.responses["bad"] == {"error": "bad cannot"}

        params = JobGroupParams(name="echo", cancel_on_error=False)
        with anyio.fail_after(5):
            async with client.job_group("good", "bad", params=params) as group:
                pass
        assert group.responses == {
            "good": {"echo": {}, "from": "client"},
            "bad": {"error": "bad cannot"},
        }
        assert group.group.statuses == {"good": JobStatus.COMPLETED, "bad": JobStatus.ERROR}
        await assert_no_leaks(runner, good, bad, client)


# -- cancellation ------------------------------------------------------------------------------


async def test_the_requester_cancels_and_the_serving_task_is_cancelled() -> None:
    server, client = Server("server"), Client("client")
    async with running(server, client) as runner:
        job = client.job("server", name="block")

        async def cancel_it() -> None:
            async with job:
                await server.wait_blocking()
                await client.cancel_job_group(job.job_id, reason="changed my mind")
                assert job.group.is_done  # ends here at once

        with anyio.fail_after(5), pytest.raises(JobCancelledError, match="changed my mind"):
            await cancel_it()
        await server.wait_cancelled()
        assert server.cancelled == [job.job_id]
        assert server.cancel_hooks == [job.job_id]
        # The server's "cancelled" answer comes after the job ended here: hooks only.
        [late] = await client.wait_for("on_job_response")
        assert (late.job_id, late.status) == (job.job_id, JobStatus.CANCELLED)
        assert client.of("on_job_completed") == []
        await assert_no_leaks(runner, server, client)


async def test_leaving_the_job_block_with_an_error_cancels_the_job() -> None:
    server, client = Server("server"), Client("client")
    async with running(server, client) as runner:

        async def use_job() -> None:
            async with client.job("server", name="block"):
                await server.wait_blocking()
                raise RuntimeError("requester bug")

        with pytest.raises(RuntimeError, match="requester bug"):
            await use_job()
        await server.wait_cancelled()
        await assert_no_leaks(runner, server, client)


async def test_cancelling_the_requesting_task_cancels_the_job() -> None:
    server, client = Server("server"), Client("client")
    async with running(server, client) as runner:

        async def use_job() -> None:
            async with client.job("server", name="block") as job:
                async for _ in job:
                    pass

        task = asyncio.create_task(use_job())
        await server.wait_blocking()
        task.cancel()
        with anyio.fail_after(5), pytest.raises(asyncio.CancelledError):
            await task
        await server.wait_cancelled()
        await assert_no_leaks(runner, server, client)


async def test_only_the_requester_can_cancel_its_job() -> None:
    server, client, intruder = Server("server"), Client("client"), Client("intruder")
    async with running(server, client, intruder) as runner:

        async def forge_then_cancel() -> None:
            async with client.job("server", name="block") as job:
                await server.wait_blocking()
                await intruder.send_bus_message(
                    BusJobCancelMessage(source="intruder", target="server", job_id=job.job_id)
                )
                # Ask for an update after the forged cancel: once it is answered, the cancel
                # was seen.
                await client.request_job_update(job.job_id)
                async for event in job:
                    assert event == JobEvent(JobEvent.UPDATE, {"asked": 1})
                    break
                assert server.cancelled == []
                assert not job.group.is_done
                await client.cancel_job_group(job.job_id)

        with anyio.fail_after(5), pytest.raises(JobCancelledError):
            await forge_then_cancel()
        await server.wait_cancelled()
        await assert_no_leaks(runner, server, client, intruder)


async def test_job_timeout_cancels_the_serving_side() -> None:
    server, client = Server("server"), Client("client")
    async with running(server, client) as runner:
        with anyio.fail_after(5), pytest.raises(JobTimeoutError) as caught:
            async with client.job("server", name="block", timeout=0.05):
                pass
        assert isinstance(caught.value, TimeoutError)
        assert not isinstance(caught.value, WorkerNotReadyError)  # the worker was there
        await server.wait_cancelled()
        await assert_no_leaks(runner, server, client)


async def test_a_fire_and_forget_job_runs_until_it_is_cancelled() -> None:
    server, client = Server("server"), Client("client")
    async with running(server, client) as runner:
        job_id = await client.request_job("server", name="block", timeout=None)
        await server.wait_blocking()
        assert list(server.active_jobs) == [job_id]
        assert list(client.job_groups) == [job_id]
        assert await client.request_cancel_job_group(job_id, reason="operator")
        assert client.job_groups == {}
        await server.wait_cancelled()

        # A job sent as not cancellable is not cancelled by a request from outside.
        params = JobParams(name="block", cancellable=False)
        job_id = await client.request_job("server", params=params)
        await server.wait_blocking()
        assert not await client.request_cancel_job_group(job_id)
        assert not await client.request_cancel_job_group("no-such-job")
        assert list(client.job_groups) == [job_id]
        assert server.cancelled == [server.cancelled[0]]
        await client.cancel_job_group(job_id)  # the requester itself still may
        await server.wait_cancelled(2)
        await assert_no_leaks(runner, server, client)


# -- readiness ---------------------------------------------------------------------------------


async def test_a_job_for_a_worker_that_never_comes_is_not_sent() -> None:
    client = Client("client")
    entered = False
    async with running(client) as runner:
        with anyio.fail_after(5), pytest.raises(WorkerNotReadyError, match="ghost") as caught:
            async with client.job("ghost", timeout=0.01):
                entered = True
        assert not entered
        assert isinstance(caught.value, JobTimeoutError)
        assert isinstance(caught.value, JobGroupError)
        with anyio.fail_after(5), pytest.raises(WorkerNotReadyError):
            await client.request_job("ghost", timeout=0.01)
        await assert_no_leaks(runner, client)


async def test_a_job_waits_for_its_worker_to_be_ready() -> None:
    server, client = Server("server"), Client("client")
    async with running(client) as runner:
        waiting = watch_readiness_waits(runner)

        async def ask() -> dict[str, Any]:
            async with client.job("server", name="echo", timeout=5) as asked:
                pass
            return asked.response

        pending = asyncio.create_task(ask())
        with anyio.fail_after(5):
            await waiting.wait()
        assert not pending.done()
        assert runner.registry.watcher_count() == 1
        await runner.add_workers(server)
        with anyio.fail_after(5):
            assert await pending == {"echo": {}, "from": "client"}
        await assert_no_leaks(runner, server, client)


async def test_a_job_asked_before_the_runner_starts_is_sent_once_it_runs() -> None:
    runner = WorkerRunner(name="r")
    server, client = Server("server"), Client("client")
    await runner.add_workers(server, client)
    waiting = watch_readiness_waits(runner)

    async def ask() -> dict[str, Any]:
        async with client.job("server", name="echo") as asked:
            pass
        return asked.response

    pending = asyncio.create_task(ask())
    with anyio.fail_after(5):
        await waiting.wait()
    async with runner:
        with anyio.fail_after(5):
            assert await pending == {"echo": {}, "from": "client"}
        await assert_no_leaks(runner, server, client)


async def test_giving_up_on_a_job_that_waits_for_readiness_leaves_nothing() -> None:
    client = Client("client")
    async with running(client) as runner:
        waiting = watch_readiness_waits(runner)

        async def ask() -> None:
            async with client.job("ghost"):
                pass

        pending = asyncio.create_task(ask())
        with anyio.fail_after(5):
            await waiting.wait()
        assert runner.registry.watcher_count() == 1
        pending.cancel()
        with anyio.fail_after(5), pytest.raises(asyncio.CancelledError):
            await pending
        await assert_no_leaks(runner, client)


# -- the two ends stopping ---------------------------------------------------------------------


async def test_an_inactive_requester_still_gets_its_answers() -> None:
    server = Server("server")
    client = Client("client")
    async with running(server, client) as runner:
        await client.deactivate_worker("client")
        with anyio.fail_after(5):
            async with client.job("server", name="progress", payload={"steps": 1}) as job:
                events = [event async for event in job]
        assert not client.active
        assert len(events) == 6
        assert job.response == {"total": 1}
        await assert_no_leaks(runner, server, client)


async def test_a_stopping_server_answers_cancelled() -> None:
    server, client = Server("server"), Client("client")
    async with running(server, client) as runner:
        with anyio.fail_after(5):
            async with client.job("server", name="block") as job:
                await server.wait_blocking()
                await server.stop()
        assert server.finished
        assert server.cancelled == [job.job_id]
        assert job.status is JobStatus.CANCELLED
        assert job.response == {}
        await assert_no_leaks(runner, server, client)


async def test_a_stopping_requester_ends_its_jobs_as_cancelled() -> None:
    server, client = Server("server"), Client("client")
    async with running(server, client) as runner:
        job = client.job("server", name="block")

        async def stop_the_requester() -> None:
            async with job:
                await server.wait_blocking()
                await client.stop()

        with anyio.fail_after(5), pytest.raises(JobCancelledError, match="stopped"):
            await stop_the_requester()
        assert client.finished
        await client.cancel_job_group(job.job_id)  # harmless once the job is over
        await server.wait_cancelled()  # the server is told, and stops serving it
        assert server.active_jobs == {}
        await assert_no_leaks(runner, server, client)


async def test_serving_side_methods_refuse_unknown_or_answered_jobs() -> None:
    class Strict(Server):
        def __init__(self, name: str) -> None:
            super().__init__(name)
            self.refusals: list[str] = []

        async def on_job_request(self, message: BusJobRequestMessage) -> dict[str, Any] | None:
            await self.send_job_response(message.job_id, {"first": True})
            for late in (
                self.send_job_response(message.job_id, {"second": True}),
                self.send_job_update(message.job_id, {"late": True}),
                self.send_job_stream_data(message.job_id, {"late": True}),
            ):
                try:
                    await late
                except InvalidStateError as exc:
                    self.refusals.append(str(exc))
            return {"ignored": True}  # the job was answered already

    server, client = Strict("server"), Client("client")
    async with running(server, client) as runner:
        with pytest.raises(InvalidStateError, match="no active job"):
            await server.send_job_update("no-such-job", {})
        with pytest.raises(InvalidStateError, match="no active job"):
            await server.send_job_stream_end("no-such-job")
        with pytest.raises(InvalidStateError, match="no-such-job"):
            await client.request_job_update("no-such-job")
        with anyio.fail_after(5):
            async with client.job("server") as job:
                pass
        assert job.response == {"first": True}
        await assert_no_leaks(runner, server, client)
        assert len(server.refusals) == 3
        assert all("answered already" in refusal for refusal in server.refusals)


async def test_many_workers_many_jobs_at_once() -> None:
    """Updates, streams, cancellation both ways and a timeout, all at once between workers."""
    servers = [Server(f"server-{n}") for n in range(3)]
    clients = [Client(f"client-{n}") for n in range(3)]

    async def progress(client: Client, server: Server, steps: int) -> None:
        seen: list[JobEvent] = []
        async with client.job(server.name, name="progress", payload={"steps": steps}) as job:
            async for event in job:
                seen.append(event)
        assert job.response == {"total": steps}
        assert len(seen) == steps + 5  # updates, stream start, three chunks, stream end
        assert [event.data for event in seen[:steps]] == [{"step": n} for n in range(steps)]

    async def cancelled_by_requester(client: Client, server: Server) -> None:
        async def cancel_it() -> None:
            async with client.job(server.name, name="block") as job:
                await server.wait_blocking()
                await client.cancel_job_group(job.job_id)

        with pytest.raises(JobCancelledError):
            await cancel_it()

    async def cancelled_by_server(client: Client, server: Server) -> None:
        async with client.job(server.name, name="refuse") as job:
            pass
        assert job.status is JobStatus.CANCELLED

    async def timed_out(client: Client, server: Server) -> None:
        with pytest.raises(JobTimeoutError):
            async with client.job(server.name, name="block", timeout=0.05):
                pass

    async with running(*servers, *clients) as runner:
        with anyio.fail_after(10):
            await asyncio.gather(
                *(
                    progress(client, server, steps)
                    for steps, (client, server) in enumerate(
                        (c, s) for c in clients for s in servers
                    )
                ),
                cancelled_by_requester(clients[0], servers[1]),
                cancelled_by_server(clients[1], servers[2]),
                timed_out(clients[2], servers[0]),
            )
            await servers[0].wait_cancelled()
            await servers[1].wait_cancelled()
        await assert_no_leaks(runner, *servers, *clients)


async def test_a_repeated_request_does_not_end_the_running_job(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A peer that sends the same request twice must not get the first one failed."""
    started = asyncio.Event()
    release = asyncio.Event()
    served: list[str] = []

    class Server(BaseWorker):
        async def on_job_request(self, message: BusJobRequestMessage) -> dict[str, Any]:
            served.append(message.job_id)
            started.set()
            await release.wait()
            return {"ok": True}

    server, caller = Server("server"), BaseWorker("caller")
    requests = 0

    @server.event_handler("on_bus_message")
    def handled(worker: BaseWorker, message: BusMessage) -> None:
        nonlocal requests
        if isinstance(message, BusJobRequestMessage):
            requests += 1
            if requests == 2:
                release.set()  # the repeat has been handled while the job runs

    runner = WorkerRunner()
    await runner.add_workers(server, caller)
    with caplog.at_level(logging.WARNING):
        async with runner:
            with anyio.fail_after(5):
                async with caller.job("server", name="once", timeout=10) as job:
                    await started.wait()
                    await caller.send_bus_message(
                        BusJobRequestMessage(source="caller", target="server", job_id=job.job_id)
                    )
            assert job.response == {"ok": True}
            assert job.status is JobStatus.COMPLETED
            assert served == [job.job_id]
    assert any("repeated request" in r.getMessage() for r in caplog.records)


async def test_a_job_in_flight_ends_when_its_worker_becomes_unreachable() -> None:
    """The link to the job's worker gives up while the job waits for its answer: the job ends
    then, as if the worker had answered with an error naming the cause (its hooks run), not at
    its timeout."""
    client = Client("client")
    async with running(client) as runner:
        registry = runner.registry
        registry.register_remote(WorkerRegistryEntry(name="far"), origin="link")

        async def run_job() -> None:
            async with client.job("far", name="ask", timeout=60):
                # The request is out, and nobody will answer it.
                registry.unregister("far")  # the link went down...
                registry.mark_unreachable("far", ConnectionError("refused by the peer"))

        with pytest.raises(JobFailedError, match="unreachable: refused by the peer"):
            await asyncio.wait_for(run_job(), 5)
        await client.wait_for("on_job_error")
        assert client.job_groups == {}
