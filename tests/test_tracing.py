"""Tracing: a message's trace context on the wire (pure), a job's spans in one process, across
a real uvicorn link to a server in another process, and across the Redis bus."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from fastapi_busproxy import (
    BaseWorker,
    BusDataMessage,
    BusJobRequestMessage,
    JSONMessageSerializer,
    WorkerRunner,
    tracing,
)
from fastapi_busproxy.messages import set_trace_context
from fastapi_busproxy.proxy.forwarding import ForwardingRules
from fastapi_busproxy.proxy.framing import (
    FrameKind,
    decode_frame,
    encode_traced,
)
from fastapi_busproxy.proxy.protocol import LinkConfig, LinkProtocol, LinkStats
from fastapi_busproxy.proxy.resume import SessionState
from fastapi_busproxy.testing import RemotePeer
from tests.tracing_server import span_record

ROOT = Path(__file__).resolve().parent.parent
SERIALIZER = JSONMessageSerializer()
TRACEPARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


# -- the wire (pure) ----------------------------------------------------------------------------


def test_a_traced_batch_carries_each_messages_context() -> None:
    data = encode_traced([b"one", b"two"], [TRACEPARENT + b"\nvendor=x", None])
    frame = decode_frame(data)
    assert frame.kind is FrameKind.BATCH
    assert [bytes(p) for p in frame.payloads] == [b"one", b"two"]
    assert list(frame.contexts) == [TRACEPARENT + b"\nvendor=x", b""]


def test_a_traced_sequenced_frame_keeps_its_numbers() -> None:
    frame = decode_frame(encode_traced([b"m"], [TRACEPARENT], first_seq=7, ack=3))
    assert (frame.kind, frame.seq, frame.token) == (FrameKind.SEQUENCED, 7, 3)
    assert list(frame.contexts) == [TRACEPARENT]


def test_a_context_that_is_not_a_trace_context_is_dropped_not_the_message() -> None:
    frame = decode_frame(encode_traced([b"m", b"n"], [b"\x00\xffnot text", b"x" * 2000]))
    assert [bytes(p) for p in frame.payloads] == [b"m", b"n"]
    assert list(frame.contexts) == [b"", b""]  # too long: left out when encoded


def make(framed: bool, session: SessionState | None = None, client: bool = False) -> LinkProtocol:
    return LinkProtocol(
        name="link",
        config=LinkConfig(),
        stats=LinkStats(),
        serializer=SERIALIZER,
        rules=ForwardingRules.build(
            local_worker="voice" if client else "assistant",
            remote_worker="assistant" if client else "voice",
        ),
        framed=framed,
        now=0.0,
        session=session,
        client=client,
    )


def traced(message: BusDataMessage) -> BusDataMessage:
    set_trace_context(message, TRACEPARENT)
    return message


def test_the_context_crosses_a_framed_link_and_only_traced_messages_pay_for_it() -> None:
    sender, receiver = make(framed=True, client=True), make(framed=True)
    plain = BusDataMessage(source="voice", target="assistant")
    packed = sender.pack([traced(BusDataMessage(source="voice", target="assistant")), plain])
    assert packed.data is not None
    assert packed.data[0] == FrameKind.TRACED_BATCH
    first, second = receiver.receive_data(packed.data, 0.0)
    assert first.trace_context == TRACEPARENT
    assert second.trace_context is None
    untraced = sender.pack([BusDataMessage(source="voice", target="assistant")])
    assert untraced.data is not None
    assert untraced.data[0] == FrameKind.MESSAGE


def test_the_context_crosses_a_resumable_link() -> None:
    sender = make(framed=True, session=SessionState(), client=True)
    packed = sender.pack([traced(BusDataMessage(source="voice", target="assistant"))])
    assert packed.data is not None
    assert packed.data[0] == FrameKind.TRACED_SEQUENCED
    assert decode_frame(packed.data).contexts == [TRACEPARENT]


def test_the_plain_format_carries_no_context() -> None:
    """A reference peer gets the same bytes, traced or not."""
    sender = make(framed=False, client=True)
    message = traced(BusDataMessage(source="voice", target="assistant"))
    packed = sender.pack([message])
    assert packed.data == SERIALIZER.serialize(message)


@pytest.mark.parametrize(
    "raw",
    [
        TRACEPARENT,
        TRACEPARENT + b"\nvendor=a1,other=b2",
        b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",  # not sampled
        b"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-later",  # a later version
        b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-later",  # 00 has no more
        b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # a forbidden version
        b"00-00000000000000000000000000000000-b7ad6b7169203331-01",  # no trace id
        b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # no span id
        b"00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",  # upper case
        b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333-01",  # short
        TRACEPARENT + b"\n" + b"k=" + b"v" * 600,  # an oversized tracestate is dropped
        b"not a trace context",
        b"\xff\xfe",
    ],
)
def test_a_received_context_is_read_as_the_w3c_propagator_reads_it(raw: bytes) -> None:
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    tracing.instrument(tracer_provider=TracerProvider())
    try:
        from fastapi_busproxy import _tracing_hook

        ours = _tracing_hook.active._remote_context(raw)  # type: ignore[union-attr]
    finally:
        tracing.uninstrument()
    traceparent, _, tracestate = raw.decode("ascii", "replace").partition("\n")
    carrier = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    theirs = trace.get_current_span(
        TraceContextTextMapPropagator().extract(carrier)
    ).get_span_context()
    if not theirs.is_valid:
        assert ours is None
    else:
        assert ours == theirs
        assert ours.trace_state == theirs.trace_state
        assert ours.is_remote


# -- spans ---------------------------------------------------------------------------------------


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.instrument(tracer_provider=provider)
    try:
        yield exporter
    finally:
        tracing.uninstrument()


class Assistant(BaseWorker):
    async def on_job_request(self, message: BusJobRequestMessage) -> dict[str, Any] | None:
        await self.send_job_update(message.job_id, {"progress": 0.5})
        return {"n": 2 * (message.payload or {}).get("n", 0)}


def record(span: Any, process: str) -> dict[str, Any]:
    return {**span_record(span), "process": process}


def check_job_trace(records: list[dict[str, Any]], job_id: str) -> None:
    """The job's request, update and response: each sent in a span of the sender's, each
    processed in a span that is its child and links to it; all in one trace."""
    job = [r for r in records if r["attributes"].get("messaging.message.conversation_id") == job_id]
    by_id = {r["span_id"]: r for r in records}
    assert len({r["trace_id"] for r in job}) == 1, job
    sends = [r for r in job if r["kind"] == "PRODUCER"]
    processes = [r for r in job if r["kind"] == "CONSUMER"]
    types = sorted(
        r["attributes"]["fastapi_busproxy.message.type"].rsplit(".", 1)[-1] for r in sends
    )
    assert types == ["BusJobRequestMessage", "BusJobResponseMessage", "BusJobUpdateMessage"]
    assert len(processes) == 3
    for process in processes:
        send = by_id[process["parent_id"]]
        assert send["kind"] == "PRODUCER"
        assert process["links"] == [send["span_id"]]
        assert send["attributes"]["fastapi_busproxy.message.type"] == (
            process["attributes"]["fastapi_busproxy.message.type"]
        )
        assert process["attributes"]["messaging.operation.type"] == "process"
    request_send = next(r for r in sends if r["name"] == "send assistant")
    assert request_send["attributes"]["messaging.system"] == "fastapi_busproxy"
    # The answers are sent while the request is processed: children of its process span.
    request_process = next(r for r in processes if r["parent_id"] == request_send["span_id"])
    for send in sends:
        if send is not request_send:
            assert by_id[send["parent_id"]]["span_id"] == request_process["span_id"]


@pytest.mark.anyio
async def test_a_jobs_spans_form_one_trace_in_one_process(spans: InMemorySpanExporter) -> None:
    async with WorkerRunner(name="traced", handle_sigint=False) as runner:
        voice = BaseWorker("voice")
        await runner.add_workers(Assistant("assistant"), voice)
        async with voice.job("assistant", payload={"n": 2}, timeout=10) as job:
            pass
    assert job.response == {"n": 4}
    check_job_trace([record(s, "local") for s in spans.get_finished_spans()], job.job_id)


@pytest.mark.anyio
async def test_untraced_the_messages_carry_nothing() -> None:
    received: asyncio.Queue[Any] = asyncio.Queue(1)

    class Keep(BaseWorker):
        async def on_bus_message(self, message: Any) -> None:
            if isinstance(message, BusDataMessage):
                received.put_nowait(message)
            await super().on_bus_message(message)

    async with WorkerRunner(name="untraced", handle_sigint=False) as runner:
        voice = BaseWorker("voice")
        await runner.add_workers(Keep("assistant"), voice)
        await voice.send_bus_message(BusDataMessage(source="voice", target="assistant"))
        message = await asyncio.wait_for(received.get(), 10)
    assert message.trace_context is None


@pytest.mark.anyio
@pytest.mark.uvicorn
async def test_a_jobs_spans_form_one_trace_across_processes(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    """The client here, the server in a process of its own on real uvicorn: the server's
    spans continue the client's trace, both ways."""
    spans_file = tmp_path / "server-spans.jsonl"
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.tracing_server",
        str(spans_file),
        cwd=str(ROOT),
        stdout=asyncio.subprocess.PIPE,
    )
    assert server.stdout is not None
    try:
        line = await asyncio.wait_for(server.stdout.readline(), 30)
        assert line.startswith(b"READY"), line
        url = f"ws://127.0.0.1:{int(line.split()[1])}/ws"
        async with RemotePeer(url, "voice", remote_worker_name="assistant") as peer:
            async with peer.worker.job("assistant", payload={"n": 21}, timeout=10) as job:
                pass
            assert job.response == {"n": 42}
    finally:
        if server.returncode is None:
            server.send_signal(signal.SIGTERM)
        await asyncio.wait_for(server.wait(), 30)
    server_records = [json.loads(line) for line in spans_file.read_text().splitlines()]
    client_records = [record(s, "client") for s in spans.get_finished_spans()]
    records = client_records + server_records
    check_job_trace(records, job.job_id)
    processes = {r["process"] for r in records if r["attributes"].get(
        "messaging.message.conversation_id") == job.job_id}
    assert processes == {"client", "server"}
    # The request was sent here and processed there; the answers the other way.
    request_send = next(r for r in client_records if r["name"] == "send assistant")
    assert any(r["parent_id"] == request_send["span_id"] for r in server_records)


@pytest.mark.anyio
@pytest.mark.redis
async def test_the_context_crosses_the_redis_bus(spans: InMemorySpanExporter) -> None:
    from fastapi_busproxy.redis import RedisBus
    from tests.redis_support import redis_url

    received: asyncio.Queue[Any] = asyncio.Queue(1)

    class Keep(BaseWorker):
        async def on_bus_message(self, message: Any) -> None:
            if isinstance(message, BusDataMessage) and message.source == "voice":
                received.put_nowait(message)
            await super().on_bus_message(message)

    async with redis_url() as url:
        prefix = "trace-test"
        async with (
            WorkerRunner(name="a", bus=RedisBus(url, prefix=prefix), handle_sigint=False) as a,
            WorkerRunner(name="b", bus=RedisBus(url, prefix=prefix), handle_sigint=False) as b,
        ):
            voice = BaseWorker("voice")
            await a.add_workers(voice)
            await b.add_workers(Keep("assistant"))
            await a.registry.wait_ready("assistant", 10)
            await voice.send_bus_message(BusDataMessage(source="voice", target="assistant"))
            message = await asyncio.wait_for(received.get(), 10)
    assert message.origin is not None  # it came through Redis
    finished = [record(s, "local") for s in spans.get_finished_spans()]
    send = next(r for r in finished if r["name"] == "send assistant")
    assert message.trace_context is not None
    assert send["span_id"] in message.trace_context.decode()
    process = next(r for r in finished if r["name"] == "process assistant")
    assert process["parent_id"] == send["span_id"]


@pytest.mark.anyio
async def test_a_handler_that_raises_marks_its_span(spans: InMemorySpanExporter) -> None:
    from opentelemetry.trace import StatusCode

    failed: asyncio.Queue[None] = asyncio.Queue(1)

    class Faulty(BaseWorker):
        async def on_bus_message(self, message: Any) -> None:
            if isinstance(message, BusDataMessage) and message.source == "voice":
                failed.put_nowait(None)
                raise RuntimeError("boom")
            await super().on_bus_message(message)

    async with WorkerRunner(name="faulty", handle_sigint=False) as runner:
        voice = BaseWorker("voice")
        await runner.add_workers(Faulty("assistant"), voice)
        await voice.send_bus_message(BusDataMessage(source="voice", target="assistant"))
        await asyncio.wait_for(failed.get(), 10)
        # The span ends as the handler's error leaves it: wait for the delivery to go on.
        await voice.send_bus_message(BusDataMessage(source="voice", target="assistant"))
        await asyncio.wait_for(failed.get(), 10)
    processes = [s for s in spans.get_finished_spans() if s.name == "process assistant"]
    assert processes
    assert processes[0].status.status_code is StatusCode.ERROR
    assert processes[0].events[0].name == "exception"
