"""Jobs between workers on a real bus: answers, updates, streams, cancellation, timeouts, leaks."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import anyio
import pytest

from fastapi_busproxy import BaseWorker, WorkerRunner
from fastapi_busproxy.exceptions import (
    ConfigurationError,
    JobCancelledError,
    JobFailedError,
    JobTimeoutError,
)
from fastapi_busproxy.messages import (
    BusJobCancelMessage,
    BusJobRequestMessage,
    BusJobResponseMessage,
    BusJobResponseUrgentMessage,
    BusJobStreamDataMessage,
    BusJobStreamEndMessage,
    BusJobStreamStartMessage,
    BusJobUpdateMessage,
    BusJobUpdateRequestMessage,
    BusJobUpdateUrgentMessage,
    JobStatus,
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
        self.update_requests: list[str] = []

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
            await self.send_job_stream_end(job_id)
            return {"total": steps}
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

    async def on_job_update_request(self, message: BusJobUpdateRequestMessage) -> None:
        self.update_requests.append(message.job_id)
        await self.send_job_update(message.job_id, {"asked": len(self.update_requests)})

    async def wait_blocking(self) -> None:
        with anyio.fail_after(5):
            await self.blocking.wait()
        self.blocking.clear()

    async def wait_cancelled(self, count: int = 1) -> None:
        with anyio.fail_after(5):
            while len(self.cancelled) < count:
                self.cancelled_event.clear()
                await self.cancelled_event.wait()


class Client(BaseWorker):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.responses: list[BusJobResponseMessage | BusJobResponseUrgentMessage] = []
        self.answered = asyncio.Event()

    async def on_job_response(
        self, message: BusJobResponseMessage | BusJobResponseUrgentMessage
    ) -> None:
        self.responses.append(message)
        self.answered.set()


async def test_job_round_trip() -> None:
    server, client = Server("server"), Client("client")
    async with running(server, client) as runner:
        with anyio.fail_after(5):
            async with client.job("server", name="echo", payload={"q": 1}) as job:
                assert client.get_job(job.job_id) is job
                assert job.target == "server"
                assert job.name == "echo"
        assert job.status is JobStatus.COMPLETED
        assert job.response == {"echo": {"q": 1}, "from": "client"}
        assert job.error is None
        assert client.get_job(job.job_id) is None
        await assert_no_leaks(runner, server, client)


async def test_updates_and_stream_arrive_in_order_then_the_response() -> None:
    server, client = Server("server"), Client("client")
    async with running(server, client) as runner:
        events: list[tuple[type[Any], dict[str, Any] | None]] = []
        with anyio.fail_after(5):
            async with client.job("server", name="progress", payload={"steps": 2}) as job:
                async for event in job:
                    if isinstance(event, (BusJobUpdateMessage, BusJobUpdateUrgentMessage)):
                        events.append((type(event), event.update))
                    else:
                        events.append((type(event), event.data))
        assert events == [
            (BusJobUpdateMessage, {"step": 0}),
            (BusJobUpdateMessage, {"step": 1}),
            (BusJobStreamStartMessage, {"chunks": 3}),
            (BusJobStreamDataMessage, {"chunk": 0}),
            (BusJobStreamDataMessage, {"chunk": 1}),
            (BusJobStreamDataMessage, {"chunk": 2}),
            (BusJobStreamEndMessage, None),
        ]
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
            job = await client.start_job("server", name="progress", payload={"steps": 10})
            with anyio.fail_after(5):
                await job.wait()  # not reading: 15 events arrive for a buffer of 3
                kept = [event async for event in job]
            await assert_no_leaks(runner, server, client)
    assert [type(event) for event in kept] == [
        BusJobStreamDataMessage,
        BusJobStreamDataMessage,
        BusJobStreamEndMessage,
    ]
    assert job.dropped_events == 12
    assert any("dropped" in r.getMessage() for r in caplog.records)


async def test_start_job_and_request_job() -> None:
    server, client = Server("server"), Client("client")
    async with running(server, client) as runner:
        job = await client.start_job("server", name="echo", payload={"n": 1})
        with anyio.fail_after(5):
            assert await job.wait() == {"echo": {"n": 1}, "from": "client"}

        client.answered.clear()
        job_id = await client.request_job("server", name="echo", payload={"n": 2})
        with anyio.fail_after(5):
            await client.answered.wait()
        [answer] = [r for r in client.responses if r.job_id == job_id]
        assert answer.status is JobStatus.COMPLETED
        assert answer.response == {"echo": {"n": 2}, "from": "client"}
        assert client.get_job(job_id) is None
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
    assert caught.value.status == status
    assert caught.value.response == response
    assert caught.value.job_id == job.job_id
    assert job.status is JobStatus(status)
    assert job.error is caught.value
    if job_name == "raise":  # the server logs the failure of its own job
        assert any(r.exc_info and "server" in r.getMessage() for r in caplog.records)


async def test_a_worker_that_serves_no_jobs_answers_error() -> None:
    client = Client("client")
    async with running(Probe("plain"), client):
        with anyio.fail_after(5), pytest.raises(JobFailedError, match="does not serve jobs"):
            async with client.job("plain"):
                pass


async def test_the_server_answering_cancelled_raises_job_cancelled() -> None:
    server, client = Server("server"), Client("client")
    async with running(server, client) as runner:
        with anyio.fail_after(5), pytest.raises(JobCancelledError) as caught:
            async with client.job("server", name="refuse"):
                pass
        assert caught.value.status == "cancelled"
        await assert_no_leaks(runner, server, client)


async def test_the_requester_cancels_and_the_serving_task_is_cancelled() -> None:
    server, client = Server("server"), Client("client")
    async with running(server, client) as runner:
        job = await client.start_job("server", name="block")
        await server.wait_blocking()
        await job.cancel("changed my mind")
        assert job.done  # ends here at once
        with pytest.raises(JobCancelledError, match="changed my mind"):
            await job.wait()
        await server.wait_cancelled()
        assert server.cancelled == [job.job_id]
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
                await job.wait()

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
        job = await client.start_job("server", name="block")
        await server.wait_blocking()
        await intruder.send_bus_message(
            BusJobCancelMessage(source="intruder", target="server", job_id=job.job_id)
        )
        # Ask for an update after the forged cancel: once it is answered, the cancel was seen.
        await client.request_job_update(job.job_id)
        with anyio.fail_after(5):
            async for event in job:
                assert isinstance(event, BusJobUpdateMessage)
                assert event.update == {"asked": 1}
                break
        assert server.cancelled == []
        assert not job.done
        await job.cancel()
        await server.wait_cancelled()
        await assert_no_leaks(runner, server, client, intruder)


async def test_job_timeout_cancels_the_serving_side() -> None:
    server, client = Server("server"), Client("client")
    async with running(server, client) as runner:
        with anyio.fail_after(5), pytest.raises(JobTimeoutError) as caught:
            async with client.job("server", name="block", timeout=0.05):
                pass
        assert isinstance(caught.value, TimeoutError)
        await server.wait_cancelled()
        await assert_no_leaks(runner, server, client)


async def test_a_job_for_a_worker_that_never_comes_times_out() -> None:
    client = Client("client")
    async with running(client) as runner:
        with anyio.fail_after(5), pytest.raises(JobTimeoutError, match="ghost"):
            await client.start_job("ghost", timeout=0.01)
        await assert_no_leaks(runner, client)


async def test_waiting_on_a_job_with_a_timeout_leaves_it_running() -> None:
    server, client = Server("server"), Client("client")
    async with running(server, client) as runner:
        job = await client.start_job("server", name="block")
        with pytest.raises(JobTimeoutError):
            await job.wait(timeout=0.01)
        assert not job.done
        assert server.cancelled == []
        await job.cancel()
        await server.wait_cancelled()
        await assert_no_leaks(runner, server, client)


async def test_a_job_waits_for_its_worker_to_be_ready() -> None:
    server, client = Server("server"), Client("client")
    async with running(client) as runner:
        pending = asyncio.create_task(client.start_job("server", name="echo", timeout=5))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not pending.done()
        assert runner.registry.watcher_count() == 1
        await runner.add_workers(server)
        with anyio.fail_after(5):
            job = await pending
            assert await job.wait() == {"echo": {}, "from": "client"}
        await assert_no_leaks(runner, server, client)


async def test_giving_up_on_a_job_that_waits_for_readiness_leaves_nothing() -> None:
    client = Client("client")
    async with running(client) as runner:
        pending = asyncio.create_task(client.start_job("ghost"))
        for _ in range(5):
            await asyncio.sleep(0)
        assert runner.registry.watcher_count() == 1
        pending.cancel()
        with anyio.fail_after(5), pytest.raises(asyncio.CancelledError):
            await pending
        await assert_no_leaks(runner, client)


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
        job = await client.start_job("server", name="block")
        await server.wait_blocking()
        await server.cancel("shutting down")
        with anyio.fail_after(5), pytest.raises(JobCancelledError):
            await job.wait()
        await assert_no_leaks(runner, client)


async def test_a_stopping_requester_ends_its_jobs_as_cancelled() -> None:
    server, client = Server("server"), Client("client")
    async with running(server, client) as runner:
        job = await client.start_job("server", name="block")
        await server.wait_blocking()
        await client.cancel()
        with pytest.raises(JobCancelledError, match="stopped"):
            await job.wait()
        await job.cancel()  # harmless once the job is over
        await server.wait_cancelled()  # nobody waits for the answer: the server stops too
        await assert_no_leaks(runner, server, client)


async def test_serving_side_methods_refuse_unknown_or_answered_jobs() -> None:
    class Strict(Server):
        async def on_job_request(self, message: BusJobRequestMessage) -> dict[str, Any] | None:
            await self.send_job_response(message.job_id, {"first": True})
            with pytest.raises(ConfigurationError, match="already been answered"):
                await self.send_job_response(message.job_id, {"second": True})
            return {"ignored": True}  # the job was answered already

    server, client = Strict("server"), Client("client")
    async with running(server, client) as runner:
        with pytest.raises(ConfigurationError, match="not serving"):
            await server.send_job_update("no-such-job", {})
        with pytest.raises(ConfigurationError, match="no running job"):
            await client.request_job_update("no-such-job")
        with anyio.fail_after(5):
            async with client.job("server") as job:
                pass
        assert job.response == {"first": True}
        await assert_no_leaks(runner, server, client)


async def test_many_workers_many_jobs_at_once() -> None:
    """Updates, streams, cancellation both ways and a timeout, all at once between workers."""
    servers = [Server(f"server-{n}") for n in range(3)]
    clients = [Client(f"client-{n}") for n in range(3)]

    async def progress(client: Client, server: Server, steps: int) -> None:
        seen: list[Any] = []
        async with client.job(server.name, name="progress", payload={"steps": steps}) as job:
            async for event in job:
                assert (event.source, event.target) == (server.name, client.name)
                seen.append(event)
        assert job.response == {"total": steps}
        assert len(seen) == steps + 5  # updates, stream start, three chunks, stream end

    async def cancelled_by_requester(client: Client, server: Server) -> None:
        job = await client.start_job(server.name, name="block")
        await server.wait_blocking()
        await job.cancel()

    async def cancelled_by_server(client: Client, server: Server) -> None:
        with pytest.raises(JobCancelledError):
            async with client.job(server.name, name="refuse"):
                pass

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


async def test_a_repeated_request_does_not_end_the_running_job() -> None:
    """A peer that sends the same request twice must not get the first one failed."""
    from fastapi_busproxy import BusJobRequestMessage

    started = asyncio.Event()
    release = asyncio.Event()

    class Server(BaseWorker):
        async def on_job_request(self, message: BusJobRequestMessage) -> dict[str, Any]:
            started.set()
            await release.wait()
            return {"ok": True}

    runner = WorkerRunner()
    caller = BaseWorker("caller")
    await runner.add_workers(Server("server"), caller)
    async with runner:
        job = await caller.start_job("server", name="once", timeout=10)
        with anyio.fail_after(5):
            await started.wait()
        await caller.send_bus_message(
            BusJobRequestMessage(source="caller", target="server", job_id=job.job_id)
        )
        release.set()
        with anyio.fail_after(5):
            assert await job.wait() == {"ok": True}
