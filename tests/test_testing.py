"""The test kit (fastapi_busproxy.testing) against a real app on uvicorn: what a user's test
of their own app looks like, and what it says when the link cannot come up."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi import Depends, FastAPI

from fastapi_busproxy import (
    BaseWorker,
    BearerTokenAuth,
    BusDataMessage,
    BusJobRequestMessage,
    BusMessage,
    HandshakeRejectedError,
    JobFailedError,
    WorkerUnreachableError,
    include_bus_proxy,
    runner_of,
)
from fastapi_busproxy.testing import RemotePeer, running_app

pytestmark = pytest.mark.anyio


@dataclass(kw_only=True)
class Question(BusDataMessage):
    text: str = ""


@dataclass(kw_only=True)
class Answer(BusDataMessage):
    text: str = ""


class Assistant(BaseWorker):
    async def on_job_request(self, message: BusJobRequestMessage) -> dict[str, Any] | None:
        if message.job_name == "double":
            return {"n": 2 * (message.payload or {}).get("n", 0)}
        raise ValueError(f"no job {message.job_name!r}")

    async def on_bus_message(self, message: BusMessage) -> None:
        if isinstance(message, Question):
            await self.send_bus_message(
                Answer(source=self.name, target=message.source, text=message.text.upper())
            )
        await super().on_bus_message(message)


def make_app(**route_options: Any) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runner_of(app).add_workers(Assistant("assistant"))
        yield

    app = FastAPI(lifespan=lifespan)
    include_bus_proxy(app, "/ws", "assistant", remote_worker_name="voice", **route_options)
    return app


async def test_a_peer_runs_jobs_and_exchanges_messages() -> None:
    async with running_app(make_app()) as url:
        async with RemotePeer(f"{url}/ws", "voice", remote_worker_name="assistant") as peer:
            assert await peer.job("double", payload={"n": 21}) == {"n": 42}
            with pytest.raises(JobFailedError):
                await peer.job("unknown")
            await peer.send(Question(source="voice", target="assistant", text="hi"))
            answer = await peer.expect(Answer)
            assert answer.text == "HI"
            with pytest.raises(TimeoutError, match="no Answer"):
                await peer.expect(Answer, timeout=0.2)
            assert peer.stats.rejected == 0


async def test_a_peer_with_the_wrong_token_fails_at_once_with_the_cause() -> None:
    app = make_app(dependencies=[Depends(BearerTokenAuth(tokens={"s3cret": "alice"}))])
    async with running_app(app) as url:
        peer = RemotePeer(
            f"{url}/ws",
            "voice",
            remote_worker_name="assistant",
            headers={"Authorization": "Bearer nope"},
            ready_timeout=60,  # failing at all before it is the point
        )
        with pytest.raises(WorkerUnreachableError) as caught:
            await peer.__aenter__()
        assert isinstance(caught.value.__cause__, HandshakeRejectedError)
        assert "403" in str(caught.value)


async def test_a_peer_under_another_name_fails_at_once_with_both_names() -> None:
    """The app expects "voice"; the peer says "vocie". Entering may succeed (the app's worker
    is announced before the mismatch is seen); the first job fails then, at once, naming
    both, instead of at its timeout."""

    async def ask() -> None:
        async with RemotePeer(
            f"{url}/ws", "vocie", remote_worker_name="assistant", ready_timeout=60
        ) as peer:
            await peer.job("double", payload={"n": 1}, timeout=60)

    async with running_app(make_app()) as url:
        with pytest.raises((WorkerUnreachableError, JobFailedError)) as caught:
            await ask()
        assert "'voice'" in str(caught.value)
        assert "'vocie'" in str(caught.value)


async def test_a_job_the_app_refuses_fails_at_once_with_the_reason() -> None:
    """A second worker of the peer's asks the app's worker through the link; the route
    serves only "voice", so the app refuses the request (forged source), and the requester's
    job fails at once with that reason instead of at its timeout."""
    async with running_app(make_app()) as url:
        async with RemotePeer(f"{url}/ws", "voice", remote_worker_name="assistant") as peer:
            helper = BaseWorker("helper")
            await peer.runner.add_workers(helper)
            with pytest.raises(JobFailedError, match=r"refused the job request \(forged_source\)"):
                async with helper.job("assistant", name="double", timeout=60):
                    pass
            assert await peer.job("double", payload={"n": 2}) == {"n": 4}  # the link is fine
            assert peer.stats.rejected == 0
