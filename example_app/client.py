"""The client: a caller worker that reaches the assistant through a WebSocketProxyClient."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from fastapi_busproxy import (
    BaseWorker,
    JobEvent,
    JobParams,
    WebSocketProxyClient,
    WorkerActivationArgs,
    WorkerReadyData,
    WorkerRunner,
    worker_ready,
)
from fastapi_busproxy.proxy import ReconnectPolicy

QUESTIONS = ("What is the bus?", "What crosses a link?")


class Caller(BaseWorker):
    """Once the assistant is ready: activates it, asks each question, prints the stream."""

    def __init__(
        self, name: str, questions: Sequence[str], out: Callable[[str], None] = print
    ) -> None:
        super().__init__(name)
        self.questions = list(questions)
        self.answers: list[dict[str, Any] | None] = []
        self.out = out

    @worker_ready(name="assistant")
    async def assistant_ready(self, data: WorkerReadyData) -> None:
        self.out(f"[{self.name}] assistant is ready (through the link)")
        await self.activate_worker(
            "assistant", args=WorkerActivationArgs(metadata={"caller": self.name})
        )
        for question in self.questions:
            self.out(f"[{self.name}] asks: {question}")
            params = JobParams(name="ask", payload={"question": question}, timeout=30)
            async with self.job("assistant", params=params) as job:
                words: list[str] = []
                async for event in job:
                    data = event.data or {}
                    if event.type == JobEvent.UPDATE:
                        self.out(f"[{self.name}]   progress {data.get('progress'):.0%}")
                    elif event.type == JobEvent.STREAM_START:
                        self.out(f"[{self.name}]   streaming {data.get('words')} words")
                    elif event.type == JobEvent.STREAM_DATA:
                        words.append(str(data.get("text")))
                        self.out(f"[{self.name}]   ... {' '.join(words)}")
            self.answers.append(job.response)
            self.out(f"[{self.name}] answer: {job.response.get('answer')}")
        await self.end(reason="all questions answered")


async def run_client(
    url: str,
    *,
    token: str,
    name: str = "demo",
    questions: Sequence[str] = QUESTIONS,
    out: Callable[[str], None] = print,
    timeout: float = 60.0,
) -> list[dict[str, Any] | None]:
    """Connect to ``url`` (``.../ws/<name>``), ask ``questions``, return the answers."""
    runner = WorkerRunner(name=f"client-{name}")
    caller = Caller(name, questions, out)
    proxy = WebSocketProxyClient(
        "link",
        url=url,
        remote_worker_name="assistant",
        local_worker_name=name,
        headers=lambda: {"Authorization": f"Bearer {token}"},
        active=True,
        reconnect=ReconnectPolicy(initial_delay=0.2, max_delay=5.0, max_attempts=10),
    )

    @proxy.event_handler("on_connected")
    async def connected(worker: WebSocketProxyClient, websocket: Any) -> None:
        out(f"[link] connected to {url} ({worker.subprotocol or 'plain format'})")

    @proxy.event_handler("on_gave_up")
    async def gave_up(worker: WebSocketProxyClient, error: Exception) -> None:
        out(f"[link] gave up: {error}")
        await caller.cancel(reason="no link")

    async with runner:
        await runner.add_workers(caller, proxy)
        await asyncio.wait_for(caller.wait(), timeout)
    return caller.answers
