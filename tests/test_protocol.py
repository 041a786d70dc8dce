"""The link's protocol as pure code: no event loop, no socket, and a clock the test moves.

Each test feeds :class:`LinkProtocol` WebSocket messages and times, and checks what it decides:
the bus messages to deliver, the frames to write, the counters and the close code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from fastapi_busproxy import JSONMessageSerializer
from fastapi_busproxy.closecodes import CloseCode
from fastapi_busproxy.exceptions import MessageEncodeError
from fastapi_busproxy.messages import (
    BusDataMessage,
    BusJobRequestMessage,
    BusJobResponseMessage,
    BusMessage,
    BusWorkerRegistryMessage,
    JobStatus,
    WorkerRegistryEntry,
)
from fastapi_busproxy.proxy.forwarding import ForwardingRules
from fastapi_busproxy.proxy.framing import (
    FrameKind,
    JobRefusal,
    decode_frame,
    encode_batch,
    encode_job_refusal,
    encode_message,
    encode_notice,
    encode_ping,
    encode_pong,
    parse_job_refusal,
)
from fastapi_busproxy.proxy.protocol import (
    MAX_PENDING_JOB_NOTICES,
    MAX_PENDING_PONGS,
    LinkConfig,
    LinkProtocol,
    LinkStats,
)

LOCAL = "worker"
REMOTE = "voice"
SERIALIZER = JSONMessageSerializer()


def make(
    *, framed: bool = False, now: float = 100.0, client: bool = False, **config: Any
) -> LinkProtocol:
    return LinkProtocol(
        name="gateway",
        config=LinkConfig(**config),
        stats=LinkStats(),
        serializer=SERIALIZER,
        rules=ForwardingRules.build(local_worker=LOCAL, remote_worker=REMOTE),
        framed=framed,
        now=now,
        client=client,
    )


def inbound(n: int = 0) -> BusMessage:
    return BusJobRequestMessage(source=REMOTE, target=LOCAL, job_id=f"in-{n}")


def outbound(n: int = 0) -> BusMessage:
    return BusJobRequestMessage(source=LOCAL, target=REMOTE, job_id=f"out-{n}")


def wire(message: BusMessage) -> bytes:
    return SERIALIZER.serialize(message)


FORGED = wire(BusDataMessage(source="mallory", target=LOCAL))


# --- receiving: the plain format -------------------------------------------------------------


def test_a_plain_message_is_delivered_with_its_origin_and_counted() -> None:
    protocol = make()
    [message] = protocol.receive_data(wire(inbound()), now=101.0)
    assert message == inbound()
    assert message.origin == "gateway"  # type: ignore[attr-defined]
    assert protocol.stats.messages_in == 1
    assert protocol.stats.bytes_in == len(wire(inbound()))
    assert not protocol.closing


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(b"not json", "malformed", id="malformed"),
        pytest.param("text", "text_frame", id="text"),
        pytest.param(FORGED, "forged_source", id="forged"),
    ],
)
def test_bad_input_is_refused_and_counted_without_closing(data: bytes | str, reason: str) -> None:
    protocol = make()
    assert protocol.receive_data(data, now=101.0) == []
    assert protocol.stats.rejected_by_reason == {reason: 1}
    assert not protocol.closing
    assert protocol.receive_data(wire(inbound()), now=101.0) == [inbound()]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        pytest.param(b"not json", CloseCode.INVALID_DATA, id="malformed-1007"),
        pytest.param(FORGED, CloseCode.POLICY_VIOLATION, id="forged-1008"),
    ],
)
def test_bad_messages_in_a_row_close_the_link(data: bytes, code: int) -> None:
    protocol = make(max_bad_frames=3)
    for _ in range(3):
        protocol.receive_data(data, now=101.0)
    assert protocol.close_info is not None
    assert (protocol.close_info.code, protocol.close_info.by_us) == (code, True)
    assert protocol.receive_data(wire(inbound()), now=101.0) == []  # nothing after the close


def test_bad_messages_count_only_in_a_row() -> None:
    protocol = make(max_bad_frames=3)
    for data in (b"junk", b"junk", wire(inbound(1)), b"junk", b"junk"):
        protocol.receive_data(data, now=101.0)
    assert not protocol.closing
    assert protocol.stats.rejected == 4


def test_an_oversized_message_closes_with_1009_before_it_is_decoded() -> None:
    protocol = make(max_message_size=10)
    assert protocol.receive_data(wire(inbound()), now=101.0) == []
    assert protocol.close_info is not None
    assert protocol.close_info.code == CloseCode.MESSAGE_TOO_BIG
    assert protocol.stats.oversized == 1
    assert protocol.stats.rejected == 0


# --- receiving: the framed format ------------------------------------------------------------


def test_a_framed_batch_delivers_every_message_in_order() -> None:
    protocol = make(framed=True)
    batch = encode_batch([wire(inbound(n)) for n in range(3)])
    assert protocol.receive_data(batch, now=101.0) == [inbound(0), inbound(1), inbound(2)]
    assert protocol.stats.messages_in == 3


def test_a_bad_entry_in_a_batch_is_refused_alone() -> None:
    protocol = make(framed=True)
    batch = encode_batch([wire(inbound(0)), b"junk", wire(inbound(1))])
    assert protocol.receive_data(batch, now=101.0) == [inbound(0), inbound(1)]
    assert protocol.stats.rejected_by_reason == {"malformed": 1}


def test_a_batch_stops_at_the_bad_entry_that_closes_the_link() -> None:
    protocol = make(framed=True, max_bad_frames=2)
    batch = encode_batch([wire(inbound(0)), b"junk", b"junk", wire(inbound(1))])
    assert protocol.receive_data(batch, now=101.0) == [inbound(0)]
    assert protocol.close_info is not None
    assert protocol.close_info.code == CloseCode.INVALID_DATA


@pytest.mark.parametrize(
    "data",
    [b"", b"\x09whatever", b"\x01\x00\x00", b"\x02short"],
    ids=["empty", "kind", "len", "ping"],
)
def test_a_broken_frame_is_refused_as_framing(data: bytes) -> None:
    protocol = make(framed=True)
    assert protocol.receive_data(data, now=101.0) == []
    assert protocol.stats.rejected_by_reason == {"framing": 1}


def test_a_ping_is_answered_by_a_pong_of_the_same_token_and_pongs_owed_are_capped() -> None:
    protocol = make(framed=True)
    for token in range(MAX_PENDING_PONGS + 5):
        protocol.receive_data(encode_ping(token), now=101.0)
    pongs = []
    while (data := protocol.next_control()) is not None:
        pongs.append(data)
        protocol.control_written()
    assert pongs == [encode_pong(token) for token in range(MAX_PENDING_PONGS)]
    # Once written, the peer may be owed pongs again.
    protocol.receive_data(encode_ping(99), now=101.0)
    assert protocol.next_control() == encode_pong(99)


def test_a_pong_gives_the_round_trip_on_the_callers_clock() -> None:
    protocol = make(framed=True, app_keepalive=True, ping_interval=5.0)
    protocol.tick(105.0)  # a ping is due
    ping = protocol.next_control()
    assert ping is not None
    frame = decode_frame(ping)
    assert frame.kind is FrameKind.PING
    protocol.control_written()
    protocol.receive_data(encode_pong(frame.token), now=105.25)
    assert protocol.stats.last_rtt == pytest.approx(0.25)


# --- sending ---------------------------------------------------------------------------------


def test_the_plain_format_packs_one_message_per_websocket_message() -> None:
    protocol = make(batching=True)
    packed = protocol.pack([outbound(0), outbound(1)])
    assert (packed.data, packed.taken, packed.messages) == (wire(outbound(0)), 1, 1)
    assert protocol.stats.messages_out == 0  # counted once written
    protocol.written(packed)
    assert (protocol.stats.messages_out, protocol.stats.frames_out) == (1, 1)
    assert protocol.stats.bytes_out == len(wire(outbound(0)))


def test_the_framed_format_batches_up_to_the_message_limit() -> None:
    protocol = make(framed=True, max_batch_messages=3)
    packed = protocol.pack([outbound(n) for n in range(5)])
    assert packed.taken == 3
    assert packed.data == encode_batch([wire(outbound(n)) for n in range(3)])
    assert protocol.pack([outbound(0)]).data == encode_message(wire(outbound(0)))


def test_a_batch_ends_once_it_reaches_the_byte_limit() -> None:
    size = len(wire(outbound(0)))
    protocol = make(framed=True, max_batch_bytes=2 * size)
    packed = protocol.pack([outbound(n) for n in range(5)])
    assert (packed.taken, packed.messages) == (2, 2)


def test_without_batching_a_framed_link_sends_one_message_each() -> None:
    protocol = make(framed=True, batching=False)
    packed = protocol.pack([outbound(0), outbound(1)])
    assert (packed.data, packed.taken) == (encode_message(wire(outbound(0))), 1)


def test_a_message_that_cannot_be_encoded_is_dropped_counted_and_skipped() -> None:
    @dataclass(kw_only=True)
    class Unencodable(BusDataMessage):
        value: Any = None

    bad = Unencodable(source=LOCAL, target=REMOTE, value=object())
    with pytest.raises(MessageEncodeError):
        SERIALIZER.serialize(bad)
    protocol = make(framed=True)
    packed = protocol.pack([bad, outbound(1)])
    assert (packed.taken, packed.messages) == (2, 1)
    assert packed.data == encode_message(wire(outbound(1)))
    assert protocol.stats.dropped == 1
    alone = protocol.pack([bad])
    assert (alone.data, alone.taken) == (None, 1)


def test_announcements_go_ahead_in_the_links_format() -> None:
    plain, framed = make(), make(framed=True)
    plain.announce(outbound())
    framed.announce(outbound())
    assert plain.next_control() == wire(outbound())
    assert framed.next_control() == encode_message(wire(outbound()))


# --- deadlines -------------------------------------------------------------------------------


def test_a_write_the_peer_does_not_take_within_send_timeout_closes_with_4000() -> None:
    protocol = make(send_timeout=2.0)
    assert protocol.tick_interval == pytest.approx(0.5)
    protocol.write_started(110.0)
    protocol.tick(112.0)
    assert not protocol.closing  # not past the deadline yet
    protocol.tick(112.1)
    assert protocol.close_info is not None
    assert protocol.close_info.code == CloseCode.PEER_TOO_SLOW


def test_a_finished_write_is_not_a_stuck_one() -> None:
    protocol = make(send_timeout=2.0)
    protocol.write_started(110.0)
    protocol.write_finished()
    protocol.tick(200.0)
    assert not protocol.closing


def test_keepalive_pings_every_interval_and_closes_a_silent_peer_with_1011() -> None:
    protocol = make(framed=True, app_keepalive=True, ping_interval=5.0, ping_timeout=3.0)
    assert protocol.tick_interval == pytest.approx(1.25)
    protocol.tick(104.0)
    assert protocol.next_control() is None  # not due yet
    protocol.tick(105.0)
    first = protocol.next_control()
    assert first is not None
    assert first[0] == FrameKind.PING
    protocol.control_written()
    protocol.receive_data(encode_pong(0), now=106.0)  # anything received counts as alive
    protocol.tick(114.0)  # 8 s after the last thing received: the limit, not past it
    assert not protocol.closing
    protocol.tick(114.5)
    assert protocol.close_info is not None
    assert protocol.close_info.code == CloseCode.INTERNAL_ERROR


def test_no_keepalive_of_ours_on_a_plain_link() -> None:
    protocol = make(framed=False, app_keepalive=True, ping_interval=5.0)
    protocol.tick(1_000.0)
    assert protocol.next_control() is None
    assert not protocol.closing


# --- closing ---------------------------------------------------------------------------------


def test_the_first_reason_to_close_wins() -> None:
    protocol = make()
    protocol.close(CloseCode.GOING_AWAY, "proxy stopped")
    protocol.peer_closed(1000, "bye")
    protocol.close(CloseCode.INTERNAL_ERROR, "later")
    assert protocol.close_info is not None
    assert (protocol.close_info.code, protocol.close_info.by_us) == (CloseCode.GOING_AWAY, True)
    assert protocol.close_info.normal


def test_a_peer_close_is_recorded_as_not_ours() -> None:
    protocol = make()
    protocol.peer_closed(4001, "duplicate session")
    assert protocol.close_info is not None
    assert (protocol.close_info.code, protocol.close_info.by_us) == (4001, False)
    assert not protocol.close_info.normal


# --- in-band upgrade (a server socket accepted without a subprotocol) ------------------------

SUBPROTOCOL = "busproxy.v1.json"


def server_and_client() -> tuple[LinkProtocol, LinkProtocol]:
    server = make(app_keepalive=True, ping_interval=5.0)
    client = LinkProtocol(
        name="client",
        config=LinkConfig(),
        stats=LinkStats(),
        serializer=SERIALIZER,
        rules=ForwardingRules.build(local_worker=REMOTE, remote_worker=LOCAL),
        framed=False,
        now=100.0,
    )
    server.offer_upgrade(SUBPROTOCOL)
    client.expect_upgrade((SUBPROTOCOL,))
    return server, client


def drain_control(protocol: LinkProtocol) -> list[bytes]:
    frames = []
    while (data := protocol.next_control()) is not None:
        frames.append(data)
        protocol.control_written()
    return frames


def test_an_in_band_upgrade_switches_each_direction_at_the_other_sides_marker() -> None:
    server, client = server_and_client()
    # The client speaks plain until it sees the server's marker: a message it sent before.
    early = client.pack([inbound(0)])
    assert early.data == wire(inbound(0))
    # The server's first frame is the marker; what it sends after it is framed.
    server.announce(outbound(0))
    [marker, announcement] = drain_control(server)
    assert marker.startswith(b"\x00\xff")
    assert announcement == encode_message(wire(outbound(0)))
    assert server.pack([outbound(1), outbound(2)]).data == encode_batch(
        [wire(outbound(1)), wire(outbound(2))]
    )
    assert not server.framed  # the client has not answered yet
    # The server still reads the client's early message as plain.
    assert early.data is not None
    assert server.receive_data(early.data, now=101.0) == [inbound(0)]
    # The client takes the marker: it answers, then reads and writes framed.
    assert client.receive_data(marker, now=101.0) == []
    assert client.framed
    [ack] = drain_control(client)
    assert client.receive_data(announcement, now=101.0) == [outbound(0)]
    late = client.pack([inbound(1), inbound(2)])
    assert late.data == encode_batch([wire(inbound(1)), wire(inbound(2))])
    # The server reads framed once it has the answer.
    assert server.receive_data(ack, now=101.0) == []
    assert server.framed
    assert server.receive_data(late.data, now=101.0) == [inbound(1), inbound(2)]
    assert server.stats.rejected == client.stats.rejected == 0


def test_the_upgrade_marker_is_first_even_before_an_early_announcement() -> None:
    protocol = make()
    protocol.offer_upgrade(SUBPROTOCOL)
    protocol.announce(outbound(0))
    assert drain_control(protocol)[0].startswith(b"\x00\xffbusproxy-upgrade ")


def test_a_marker_for_another_format_is_refused_and_the_client_stays_plain() -> None:
    # A marker naming another format is not an upgrade: it is refused like any bad input,
    # and the client stays plain.
    client = make()
    client.expect_upgrade((SUBPROTOCOL,))
    other = make()
    other.offer_upgrade("busproxy.v1.msgpack")
    [marker] = drain_control(other)
    assert client.receive_data(marker, now=101.0) == []
    assert not client.framed
    assert client.stats.rejected_by_reason == {"malformed": 1}
    assert client.next_control() is None  # no answer


def test_a_client_that_did_not_offer_never_answers_a_marker() -> None:
    client = make()
    other = make()
    other.offer_upgrade(SUBPROTOCOL)
    [marker] = drain_control(other)
    client.receive_data(marker, now=101.0)
    assert client.next_control() is None
    assert not client.framed


def test_the_servers_keepalive_starts_with_the_upgrade() -> None:
    server, _ = server_and_client()
    drain_control(server)
    server.tick(105.0)
    ping = server.next_control()
    assert ping is not None
    assert ping[0] == FrameKind.PING


# -- worker names that do not match ----------------------------------------------------------


def announcement(name: str, target: str | None = LOCAL) -> bytes:
    message = BusWorkerRegistryMessage(
        source="proxy", target=target, runner="peer", workers=[WorkerRegistryEntry(name=name)]
    )
    return encode_message(SERIALIZER.serialize(message))


def test_a_server_refuses_a_foreign_announcement_and_tells_the_client_why() -> None:
    """Refused without harming the link (it may be a forgery), and, on our framed format, a
    notice naming both sides' names: a client of ours then knows its names are wrong."""
    server = make(framed=True)
    assert server.receive_data(announcement("vocie"), 100.0) == []
    assert server.close_info is None
    assert server.stats.rejected_by_reason == {"foreign_registry": 1}
    notice = decode_frame(server.next_control() or b"")
    assert notice.kind is FrameKind.NOTICE
    assert notice.notice.startswith("wrong worker: ")
    assert "'voice'" in notice.notice
    assert "'vocie'" in notice.notice


def test_a_client_told_its_names_are_wrong_closes_with_4003() -> None:
    client = make(framed=True, client=True)
    client.receive_data(encode_notice("wrong worker: expected worker 'a' for 'b'"), 100.0)
    assert client.close_info is not None
    assert client.close_info.code == CloseCode.WRONG_WORKER
    assert "expected worker 'a'" in client.close_info.reason


def test_a_client_whose_server_announces_another_worker_closes_with_4003() -> None:
    client = make(framed=True, client=True)
    client.receive_data(announcement("assistant"), 100.0)
    assert client.close_info is not None
    assert client.close_info.code == CloseCode.WRONG_WORKER
    assert "'voice'" in client.close_info.reason


def test_another_notice_is_only_logged(caplog: pytest.LogCaptureFixture) -> None:
    client = make(framed=True, client=True)
    client.receive_data(encode_notice("something else"), 100.0)
    assert client.close_info is None
    assert "something else" in caplog.text


def test_a_refusal_is_told_to_the_peer_once_per_kind() -> None:
    """On our framed format the peer learns why its message was refused (both names in it),
    once per kind, as the refusing side logs it."""
    server = make(framed=True)
    forged = BusDataMessage(source="vocie", target=LOCAL)
    for _ in range(3):
        server.receive_data(encode_message(SERIALIZER.serialize(forged)), 100.0)
    notices = []
    while (data := server.next_control()) is not None:
        notices.append(decode_frame(data).notice)
        server.control_written()
    assert notices == [f"refused (forged_source): BusDataMessage from 'vocie' to {LOCAL!r}"]
    assert server.stats.rejected_by_reason == {"forged_source": 3}


def refused_job_notices(protocol: LinkProtocol) -> list[JobRefusal]:
    refusals = []
    while (data := protocol.next_control()) is not None:
        refusal = parse_job_refusal(decode_frame(data).notice)
        if refusal is not None:
            refusals.append(refusal)
        protocol.control_written()
    return refusals


def test_each_refused_job_request_is_told_with_its_job_and_names() -> None:
    server = make(framed=True)
    for n in range(3):
        job = BusJobRequestMessage(source="helper", target=LOCAL, job_id=f"j{n}")
        server.receive_data(encode_message(SERIALIZER.serialize(job)), 100.0)
    assert refused_job_notices(server) == [
        JobRefusal(f"j{n}", "helper", LOCAL, "forged_source") for n in range(3)
    ]


def test_job_notices_waiting_to_be_written_are_bounded() -> None:
    """A peer that floods refused jobs and reads nothing cannot grow our control queue."""
    server = make(framed=True, max_bad_frames=10_000)
    for n in range(MAX_PENDING_JOB_NOTICES + 20):
        job = BusJobRequestMessage(source="helper", target=LOCAL, job_id=f"j{n}")
        server.receive_data(encode_message(SERIALIZER.serialize(job)), 100.0)
    assert len(refused_job_notices(server)) == MAX_PENDING_JOB_NOTICES
    # Written, they make room again.
    job = BusJobRequestMessage(source="helper", target=LOCAL, job_id="later")
    server.receive_data(encode_message(SERIALIZER.serialize(job)), 100.0)
    assert [r.job_id for r in refused_job_notices(server)] == ["later"]


def test_a_job_notice_becomes_an_error_answer_to_the_requester() -> None:
    client = make(framed=True, client=True)
    refusal = JobRefusal("j1", "helper", REMOTE, "forged_source")
    assert client.receive_data(encode_job_refusal(refusal), 100.0) == []
    [answer] = client.take_answers()
    assert isinstance(answer, BusJobResponseMessage)
    assert (answer.source, answer.target, answer.job_id) == (REMOTE, "helper", "j1")
    assert answer.status is JobStatus.ERROR
    assert "forged_source" in (answer.response or {})["error"]
    assert client.take_answers() == []
    assert client.close_info is None


def test_a_job_notice_cannot_answer_for_another_worker() -> None:
    """The peer may answer for the worker this link sends to, not for any other."""
    client = make(framed=True, client=True)
    client.receive_data(encode_job_refusal(JobRefusal("j1", "helper", "bank", "x")), 100.0)
    client.receive_data(encode_notice('job refused: {"job": 1}'), 100.0)
    assert client.take_answers() == []
    assert client.close_info is None


def test_a_plain_link_tells_nothing() -> None:
    server = make(framed=False)
    forged = BusJobRequestMessage(source="vocie", target=LOCAL, job_id="j")
    server.receive_data(SERIALIZER.serialize(forged), 100.0)
    assert server.next_control() is None  # a reference peer would not understand a notice
