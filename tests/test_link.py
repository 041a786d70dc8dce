"""Link: one connection's pumps, driven through a fake in-memory transport.

The fake plays the peer: the test puts WebSocket messages in ``incoming`` (or a
:class:`PeerClosed` to hang up), and reads what the link wrote in ``sent``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from fastapi_busproxy import JSONMessageSerializer
from fastapi_busproxy.closecodes import CloseCode
from fastapi_busproxy.exceptions import BusFullError
from fastapi_busproxy.messages import BusDataMessage, BusJobRequestMessage, BusMessage
from fastapi_busproxy.proxy._link import Link
from fastapi_busproxy.proxy._outbox import Outbox
from fastapi_busproxy.proxy._transport import PeerClosed
from fastapi_busproxy.proxy.forwarding import ForwardingRules
from fastapi_busproxy.proxy.framing import (
    FrameKind,
    decode_frame,
    encode_batch,
    encode_message,
    encode_ping,
    encode_pong,
)
from fastapi_busproxy.proxy.protocol import CloseInfo, LinkConfig, LinkStats

pytestmark = pytest.mark.anyio

LOCAL = "worker"
REMOTE = "voice"
LINK_NAME = "gateway"
SERIALIZER = JSONMessageSerializer()


class FakeTransport:
    """An in-memory WebSocket: a queue of incoming messages, a list of sent ones."""

    websocket: Any = None

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[bytes | str | PeerClosed] = asyncio.Queue()
        self.sent: list[bytes] = []
        self.close_calls: list[tuple[int, str]] = []
        self._closed = False
        self._changed = asyncio.Event()

    async def receive(self) -> bytes | str:
        if self._closed:
            raise PeerClosed(CloseCode.GOING_AWAY, "closed")
        item = await self.incoming.get()
        if isinstance(item, PeerClosed):
            self._closed = True
            raise item
        return item

    async def send(self, data: bytes) -> None:
        if self._closed:
            raise PeerClosed(1006, "connection closed")
        self.sent.append(data)
        self._changed.set()

    async def close(self, code: int, reason: str) -> None:
        self.close_calls.append((code, reason))
        if not self._closed:
            self._closed = True
            self.incoming.put_nowait(PeerClosed(code, reason))  # wakes a pending receive()

    @property
    def close_code(self) -> int | None:
        return self.close_calls[0][0] if self.close_calls else None

    def feed(self, *items: bytes | str | BusMessage | PeerClosed) -> None:
        for item in items:
            if isinstance(item, BusMessage):
                item = SERIALIZER.serialize(item)
            self.incoming.put_nowait(item)

    def hang_up(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "bye") -> None:
        self.incoming.put_nowait(PeerClosed(code, reason))

    async def wait_sent(self, count: int) -> None:
        await self.wait_until(lambda: len(self.sent) >= count)

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Wait, up to 5 s, until ``condition()`` holds after some send."""
        with anyio.fail_after(5):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


class Delivered:
    """The deliver callback: records what the link let in."""

    def __init__(self, fail_with: BaseException | None = None) -> None:
        self.messages: list[BusMessage] = []
        self.fail_with = fail_with
        self._changed = asyncio.Event()

    async def __call__(self, message: BusMessage) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.messages.append(message)
        self._changed.set()

    async def wait_for(self, count: int) -> None:
        with anyio.fail_after(5):
            while len(self.messages) < count:
                self._changed.clear()
                await self._changed.wait()


def make_link(
    transport: FakeTransport,
    deliver: Callable[[BusMessage], Any],
    *,
    framed: bool = False,
    outbox: Outbox | None = None,
    **config: Any,
) -> Link:
    return Link(
        name=LINK_NAME,
        transport=transport,
        rules=ForwardingRules.build(local_worker=LOCAL, remote_worker=REMOTE),
        serializer=SERIALIZER,
        framed=framed,
        deliver=deliver,
        outbox=outbox if outbox is not None else Outbox(max_size=100),
        stats=LinkStats(),
        config=LinkConfig(**config),
    )


async def run_to_end(link: Link) -> CloseInfo:
    with anyio.fail_after(5):
        return await link.run()


@asynccontextmanager
async def running(link: Link) -> AsyncIterator[asyncio.Task[CloseInfo]]:
    """Run the link in a task owned by the test: cancelled and awaited on the way out."""
    task = asyncio.create_task(link.run())
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.wait((task,))
        if not task.cancelled():
            task.exception()  # retrieved, so a failure in it is not reported twice


def good(n: int = 0) -> BusDataMessage:
    return BusJobRequestMessage(source=REMOTE, target=LOCAL, job_id=f"job-{n}")


def outgoing(n: int) -> BusMessage:
    return BusJobRequestMessage(source=LOCAL, target=REMOTE, job_id=f"out-{n}")


def decoded(data: bytes | memoryview) -> BusMessage:
    return SERIALIZER.deserialize(bytes(data))


# --- plain mode: receiving -------------------------------------------------------------------


async def test_plain_message_from_remote_is_delivered_with_origin() -> None:
    transport, delivered = FakeTransport(), Delivered()
    link = make_link(transport, delivered)
    transport.feed(good(1))
    transport.hang_up()

    info = await run_to_end(link)

    assert delivered.messages == [good(1)]
    assert delivered.messages[0].origin == LINK_NAME
    assert link.stats.messages_in == 1
    assert link.stats.bytes_in == len(SERIALIZER.serialize(good(1)))
    assert link.stats.rejected == 0
    assert info == CloseInfo(CloseCode.NORMAL_CLOSURE, "bye", by_us=False)
    assert transport.close_calls == []  # the peer closed: nothing to close on our side


BAD_INBOUND = [
    pytest.param(SERIALIZER.serialize(good()).decode(), "text_frame", id="text-frame"),
    pytest.param(b'{"__type__": "pipecat.bus.messages.BusDataMessage"', "malformed", id="bad-json"),
    pytest.param(b"\xff\xfe not utf-8", "malformed", id="not-utf8"),
    pytest.param(
        b'{"__type__":"os.system","__data__":{"source":"voice","target":"worker"}}',
        "malformed",
        id="unknown-type",
    ),
    pytest.param(
        SERIALIZER.serialize(BusDataMessage(source="mallory", target=LOCAL)),
        "forged_source",
        id="forged-source",
    ),
    pytest.param(
        SERIALIZER.serialize(BusDataMessage(source=REMOTE, target="someone")),
        "wrong_target",
        id="wrong-target",
    ),
]


@pytest.mark.parametrize(("frame", "reason"), BAD_INBOUND)
async def test_bad_inbound_is_refused_counted_and_link_keeps_serving(
    frame: bytes | str, reason: str
) -> None:
    transport, delivered = FakeTransport(), Delivered()
    link = make_link(transport, delivered)
    transport.feed(frame, good(2))
    transport.hang_up()

    info = await run_to_end(link)

    assert delivered.messages == [good(2)]
    assert link.stats.rejected == 1
    assert link.stats.rejected_by_reason == {reason: 1}
    assert link.stats.messages_in == 1
    assert info.by_us is False
    assert transport.close_calls == []


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        pytest.param(b"not json", CloseCode.INVALID_DATA, id="malformed-1007"),
        pytest.param("text", CloseCode.INVALID_DATA, id="text-1007"),
        pytest.param(
            SERIALIZER.serialize(BusDataMessage(source="mallory", target=LOCAL)),
            CloseCode.POLICY_VIOLATION,
            id="policy-1008",
        ),
    ],
)
async def test_too_many_bad_frames_in_a_row_close_the_link(frame: bytes | str, code: int) -> None:
    transport, delivered = FakeTransport(), Delivered()
    link = make_link(transport, delivered, max_bad_frames=3)
    transport.feed(frame, frame, frame, good())  # the good one comes too late

    info = await run_to_end(link)

    assert info.code == code
    assert info.by_us is True
    assert info.error is None
    assert transport.close_code == code
    assert link.stats.rejected == 3
    assert delivered.messages == []
    assert link.closing


async def test_bad_frames_count_only_in_a_row() -> None:
    transport, delivered = FakeTransport(), Delivered()
    link = make_link(transport, delivered, max_bad_frames=3)
    transport.feed(b"junk", b"junk", good(1), b"junk", b"junk", good(2))
    transport.hang_up()

    info = await run_to_end(link)

    assert info.by_us is False
    assert transport.close_calls == []
    assert delivered.messages == [good(1), good(2)]
    assert link.stats.rejected_by_reason == {"malformed": 4}


async def test_oversized_message_closes_with_1009() -> None:
    payload = SERIALIZER.serialize(good())
    transport, delivered = FakeTransport(), Delivered()
    link = make_link(transport, delivered, max_message_size=len(payload))
    transport.feed(payload, payload + b" ", good(9))  # at the limit: fine; one byte over: not

    info = await run_to_end(link)

    assert delivered.messages == [good()]
    assert info.code == CloseCode.MESSAGE_TOO_BIG
    assert info.by_us is True
    assert transport.close_code == CloseCode.MESSAGE_TOO_BIG
    assert link.stats.oversized == 1
    assert link.stats.rejected == 0


async def test_deliver_raising_unexpected_error_closes_with_1011() -> None:
    boom = RuntimeError("boom")
    transport, delivered = FakeTransport(), Delivered(fail_with=boom)
    link = make_link(transport, delivered)
    transport.feed(good())

    info = await run_to_end(link)

    assert info.code == CloseCode.INTERNAL_ERROR
    assert info.by_us is True
    assert info.error is boom
    assert transport.close_code == CloseCode.INTERNAL_ERROR


async def test_deliver_raising_bus_error_drops_the_message_and_keeps_serving() -> None:
    transport = FakeTransport()
    delivered = Delivered(fail_with=BusFullError("queue full"))
    link = make_link(transport, delivered)
    transport.feed(good(1), good(2))
    transport.hang_up()

    info = await run_to_end(link)

    assert info.by_us is False
    assert link.stats.dropped == 2
    assert transport.close_calls == []


async def test_cancelling_run_closes_with_1001() -> None:
    transport, delivered = FakeTransport(), Delivered()
    link = make_link(transport, delivered)
    async with running(link) as task:
        transport.feed(good())
        await delivered.wait_for(1)  # the link is up and serving
        task.cancel()
        with anyio.fail_after(5), pytest.raises(asyncio.CancelledError):
            await task
    assert transport.close_calls == [(CloseCode.GOING_AWAY, "proxy stopped")]


# --- plain mode: sending ---------------------------------------------------------------------


async def test_outbox_messages_are_sent_in_order_one_per_websocket_message() -> None:
    transport, delivered = FakeTransport(), Delivered()
    outbox = Outbox(max_size=10)
    for n in range(3):
        outbox.put_nowait(outgoing(n))
    link = make_link(transport, delivered, outbox=outbox)
    async with running(link) as task:
        await transport.wait_sent(3)
        outbox.put_nowait(outgoing(3))  # queued while running: wakes the send pump
        await transport.wait_sent(4)
        transport.hang_up()
        with anyio.fail_after(5):
            info = await task

    assert [decoded(data) for data in transport.sent] == [outgoing(n) for n in range(4)]
    assert len(outbox) == 0
    assert link.stats.messages_out == 4
    assert link.stats.frames_out == 4
    assert link.stats.bytes_out == sum(len(data) for data in transport.sent)
    assert info.by_us is False


async def test_plain_mode_sends_no_batches_even_with_batching_on() -> None:
    transport, delivered = FakeTransport(), Delivered()
    outbox = Outbox(max_size=10)
    for n in range(2):
        outbox.put_nowait(outgoing(n))
    link = make_link(transport, delivered, outbox=outbox, batching=True)
    async with running(link):
        await transport.wait_sent(2)
    assert transport.sent == [SERIALIZER.serialize(outgoing(n)) for n in range(2)]


# --- framed mode -----------------------------------------------------------------------------


async def test_framed_queued_messages_go_out_as_one_batch() -> None:
    transport, delivered = FakeTransport(), Delivered()
    outbox = Outbox(max_size=10)
    for n in range(3):
        outbox.put_nowait(outgoing(n))
    link = make_link(transport, delivered, framed=True, outbox=outbox)
    async with running(link):
        await transport.wait_sent(1)
        frame = decode_frame(transport.sent[0])
        assert frame.kind is FrameKind.BATCH
        assert [decoded(p) for p in frame.payloads] == [outgoing(n) for n in range(3)]
        assert link.stats.frames_out == 1
        assert link.stats.messages_out == 3
        assert len(outbox) == 0


async def test_framed_single_message_goes_out_as_message_frame() -> None:
    transport, delivered = FakeTransport(), Delivered()
    outbox = Outbox(max_size=10)
    outbox.put_nowait(outgoing(0))
    link = make_link(transport, delivered, framed=True, outbox=outbox)
    async with running(link):
        await transport.wait_sent(1)
    assert transport.sent == [encode_message(SERIALIZER.serialize(outgoing(0)))]


async def test_framed_without_batching_sends_one_message_per_frame() -> None:
    transport, delivered = FakeTransport(), Delivered()
    outbox = Outbox(max_size=10)
    for n in range(3):
        outbox.put_nowait(outgoing(n))
    link = make_link(transport, delivered, framed=True, outbox=outbox, batching=False)
    async with running(link):
        await transport.wait_sent(3)
    assert [decode_frame(data).kind for data in transport.sent] == [FrameKind.MESSAGE] * 3
    assert link.stats.frames_out == 3


async def test_direct_write_takes_one_message_per_turn_and_the_pump_batches_the_rest() -> None:
    transport, delivered = FakeTransport(), Delivered()
    outbox = Outbox(max_size=10)
    link = make_link(transport, delivered, framed=True, outbox=outbox)
    async with running(link):
        await asyncio.sleep(0)  # the link's tasks start
        assert await link.send_direct(outgoing(0))
        # The rest of the burst, in the same turn of the loop: queued, for the pump.
        assert not await link.send_direct(outgoing(1))
        for n in (1, 2, 3):
            outbox.put_nowait(outgoing(n))
        await transport.wait_sent(2)
        assert transport.sent[0] == encode_message(SERIALIZER.serialize(outgoing(0)))
        batch = decode_frame(transport.sent[1])
        assert batch.kind is FrameKind.BATCH
        assert [decoded(p) for p in batch.payloads] == [outgoing(n) for n in (1, 2, 3)]
        assert await link.send_direct(outgoing(4))  # a later turn, idle again
        assert link.stats.messages_out == 5
        assert link.stats.frames_out == 3


async def test_framed_received_batch_delivers_all() -> None:
    transport, delivered = FakeTransport(), Delivered()
    link = make_link(transport, delivered, framed=True)
    transport.feed(
        encode_batch([SERIALIZER.serialize(good(n)) for n in range(3)]),
        encode_message(SERIALIZER.serialize(good(3))),
    )
    transport.hang_up()

    await run_to_end(link)

    assert delivered.messages == [good(n) for n in range(4)]
    assert all(m.origin == LINK_NAME for m in delivered.messages)
    assert link.stats.messages_in == 4
    assert link.stats.rejected == 0


async def test_framed_batch_with_a_bad_entry_refuses_only_that_entry() -> None:
    transport, delivered = FakeTransport(), Delivered()
    link = make_link(transport, delivered, framed=True)
    forged = SERIALIZER.serialize(BusDataMessage(source="mallory", target=LOCAL))
    transport.feed(encode_batch([SERIALIZER.serialize(good(0)), forged, b"{"]))
    transport.hang_up()

    await run_to_end(link)

    assert delivered.messages == [good(0)]
    assert link.stats.rejected_by_reason == {"forged_source": 1, "malformed": 1}


async def test_framed_broken_frame_is_refused_as_framing() -> None:
    transport, delivered = FakeTransport(), Delivered()
    link = make_link(transport, delivered, framed=True)
    transport.feed(b"\x7f", encode_message(SERIALIZER.serialize(good())))
    transport.hang_up()

    await run_to_end(link)

    assert delivered.messages == [good()]
    assert link.stats.rejected_by_reason == {"framing": 1}


async def test_framed_ping_is_answered_with_pong_of_same_token() -> None:
    token = 0x0123456789ABCDEF
    transport, delivered = FakeTransport(), Delivered()
    link = make_link(transport, delivered, framed=True)
    transport.feed(encode_ping(token))
    async with running(link):
        await transport.wait_sent(1)
        assert transport.sent == [encode_pong(token)]
    assert delivered.messages == []
    assert link.stats.rejected == 0
    assert link.stats.messages_out == 0  # a pong is not a bus message


async def test_send_now_goes_ahead_of_the_outbox() -> None:
    transport, delivered = FakeTransport(), Delivered()
    outbox = Outbox(max_size=10)
    outbox.put_nowait(outgoing(0))
    link = make_link(transport, delivered, framed=True, outbox=outbox)
    announcement = BusDataMessage(source=LINK_NAME, target=REMOTE)
    link.send_now(announcement)
    async with running(link):
        await transport.wait_sent(2)
    assert [decoded(decode_frame(data).payloads[0]) for data in transport.sent] == [
        announcement,
        outgoing(0),
    ]


class GatedTransport(FakeTransport):
    """A transport whose first send blocks until the test opens the gate (a slow peer)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.first_send_started = asyncio.Event()

    async def send(self, data: bytes) -> None:
        if not self.gate.is_set():
            self.first_send_started.set()
            await self.gate.wait()
        await super().send(data)


async def test_control_frames_queued_during_a_slow_send_are_all_sent() -> None:
    transport, delivered = GatedTransport(), Delivered()
    link = make_link(transport, delivered, framed=True)
    link.send_now(BusDataMessage(source=LINK_NAME, target=REMOTE))
    async with running(link):
        with anyio.fail_after(5):
            await transport.first_send_started.wait()  # the announcement is in flight
        transport.feed(
            *(encode_ping(token) for token in range(1, 65)),
            encode_message(SERIALIZER.serialize(good())),
        )
        await delivered.wait_for(1)  # every ping before it has been handled
        transport.gate.set()
        await transport.wait_until(lambda: encode_pong(16) in transport.sent)
    # The frame in flight is not lost, and the first pongs go out in order; past 16 pending
    # pongs, a peer flooding pings gets no more answers (the control queue stays bounded).
    assert decode_frame(transport.sent[0]).kind is FrameKind.MESSAGE
    pongs = [decode_frame(data) for data in transport.sent[1:]]
    assert [frame.token for frame in pongs if frame.kind is FrameKind.PONG] == list(range(1, 17))


# --- watchdog --------------------------------------------------------------------------------


class StuckTransport(FakeTransport):
    """A peer that never reads: every write hangs."""

    async def send(self, data: bytes) -> None:
        await asyncio.Event().wait()


async def test_a_write_stuck_past_send_timeout_closes_with_peer_too_slow() -> None:
    transport, delivered = StuckTransport(), Delivered()
    outbox = Outbox(max_size=10)
    outbox.put_nowait(outgoing(0))
    link = make_link(transport, delivered, outbox=outbox, send_timeout=0.05)
    async with running(link) as task:
        with anyio.fail_after(5):
            info = await task
    assert (info.code, info.by_us) == (CloseCode.PEER_TOO_SLOW, True)
    assert transport.close_code == CloseCode.PEER_TOO_SLOW


async def test_keepalive_pings_then_closes_a_silent_peer_with_1011() -> None:
    transport, delivered = FakeTransport(), Delivered()
    link = make_link(
        transport,
        delivered,
        framed=True,
        app_keepalive=True,
        ping_interval=0.05,
        ping_timeout=0.05,
    )
    async with running(link) as task:
        await transport.wait_until(
            lambda: any(decode_frame(data).kind is FrameKind.PING for data in transport.sent)
        )
        with anyio.fail_after(5):
            info = await task
    assert (info.code, info.reason) == (CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
    assert transport.close_code == CloseCode.INTERNAL_ERROR


async def test_what_waited_for_the_servers_first_word_goes_out_when_a_plain_server_speaks() -> None:
    """A client that may be upgraded in band (to a resumable session) holds its data until
    the server speaks; a server that answers plain (the reference's) gets it at once, with
    nothing else to wake the link."""
    from fastapi_busproxy.proxy.resume import SessionState

    transport, delivered = FakeTransport(), Delivered()
    outbox = Outbox(max_size=10)
    link = make_link(transport, delivered, outbox=outbox)
    link.protocol.expect_upgrade(("busproxy.v2.json", "busproxy.v1.json"), SessionState())
    outbox.put_nowait(outgoing(0))  # before the server has said anything
    async with running(link):
        await asyncio.sleep(0)  # the link's first turn: nothing may go yet
        assert transport.sent == []
        transport.feed(good(1))  # the server speaks plain
        await transport.wait_sent(1)
    assert [decoded(data) for data in transport.sent] == [outgoing(0)]


# --- a resumable link that keeps what it sends elsewhere (persist) -------------------------


class Keeper:
    """A persist hook: records what it was given and how many frames were out by then; fails
    with ``fail`` once if given."""

    def __init__(self, transport: FakeTransport, fail: BaseException | None = None) -> None:
        self.transport = transport
        self.fail = fail
        self.calls: list[tuple[list[int], int, int]] = []

    async def __call__(self, state: Any, entries: list[tuple[int, bytes]], receipts: Any) -> None:
        self.calls.append(([seq for seq, _ in entries], len(receipts), len(self.transport.sent)))
        if self.fail is not None:
            fail, self.fail = self.fail, None
            raise fail


def persisting_link(transport: FakeTransport, keeper: Keeper, outbox: Outbox) -> Link:
    from fastapi_busproxy.proxy.resume import SessionState

    state = SessionState()
    state.session = "s1"
    link = Link(
        name=LINK_NAME,
        transport=transport,
        rules=ForwardingRules.build(local_worker=LOCAL, remote_worker=REMOTE),
        serializer=SERIALIZER,
        framed=True,
        deliver=Delivered(),
        outbox=outbox,
        stats=LinkStats(),
        config=LinkConfig(),
        session=state,
        persist=keeper,
    )
    link.protocol.welcome(resumed=False)  # the server's first frame
    return link


async def test_a_persisting_link_keeps_what_it_numbers_before_writing_it() -> None:
    from fastapi_busproxy._receipt import Receipt, attach_receipt

    transport, outbox = FakeTransport(), Outbox(max_size=10)
    keeper = Keeper(transport)
    link = persisting_link(transport, keeper, outbox)
    done: list[int] = []
    messages = [outgoing(n) for n in range(3)]
    receipt = Receipt(lambda: done.append(1))
    attach_receipt(messages[1], receipt)
    for message in messages:
        outbox.put_nowait(message)
    receipt.release()  # the deliverer's: the outbox, then the session, hold it
    async with running(link):
        await transport.wait_until(
            lambda: any(decode_frame(d).kind is FrameKind.SEQUENCED for d in transport.sent)
        )
    # Kept before the frame that carries them went out, with the one receipt among them.
    assert keeper.calls == [([1, 2, 3], 1, len(transport.sent) - 1)]
    assert done == [1]
    frame = decode_frame(transport.sent[-1])
    assert [SERIALIZER.deserialize(bytes(p)) for p in frame.payloads] == messages


async def test_a_link_whose_keeper_fails_writes_nothing_of_it_and_ends() -> None:
    from fastapi_busproxy._receipt import Receipt, attach_receipt
    from fastapi_busproxy.exceptions import BusUnavailableError

    transport, outbox = FakeTransport(), Outbox(max_size=10)
    keeper = Keeper(transport, fail=BusUnavailableError("Redis is away"))
    link = persisting_link(transport, keeper, outbox)
    done: list[int] = []
    message = outgoing(0)
    receipt = Receipt(lambda: done.append(1))
    attach_receipt(message, receipt)
    outbox.put_nowait(message)
    receipt.release()
    info = await run_to_end(link)
    assert keeper.calls == [([1], 1, len(transport.sent))]
    assert all(decode_frame(d).kind is not FrameKind.SEQUENCED for d in transport.sent)
    assert done == []  # not kept: the stream keeps it pending
    assert link.protocol.session is not None
    assert link.protocol.session.unpersisted() == [(1, SERIALIZER.serialize(message))]
    assert info.code == CloseCode.INTERNAL_ERROR
