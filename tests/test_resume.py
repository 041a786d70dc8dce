"""Resumable sessions as pure code: the session state, the v2 frames, and two protocol objects
talking through a list of frames, cut and resumed, with no event loop and no socket."""

from __future__ import annotations

from typing import Any

import pytest

from fastapi_busproxy import JSONMessageSerializer
from fastapi_busproxy._receipt import Receipt
from fastapi_busproxy.closecodes import CloseCode
from fastapi_busproxy.exceptions import ConfigurationError
from fastapi_busproxy.messages import BusJobRequestMessage, BusMessage
from fastapi_busproxy.proxy.forwarding import ForwardingRules
from fastapi_busproxy.proxy.framing import (
    FrameKind,
    FramingError,
    Welcome,
    choose_subprotocol,
    decode_frame,
    encode_ack,
    encode_message,
    encode_sequenced,
    encode_welcome,
    format_resume_header,
    is_resumable,
    parse_resume_acknowledged,
    parse_resume_header,
    subprotocols_for,
)
from fastapi_busproxy.proxy.protocol import (
    ACK_EVERY,
    LinkConfig,
    LinkProtocol,
    LinkStats,
)
from fastapi_busproxy.proxy.resume import MIN_REPLAY_BUFFER, SessionState

SERIALIZER = JSONMessageSerializer()
CLIENT, SERVER = "voice", "worker"


# -- the session state ------------------------------------------------------------------------


def test_sent_messages_are_numbered_and_kept_until_acknowledged() -> None:
    state = SessionState(MIN_REPLAY_BUFFER)
    assert state.record([b"a", b"bb"]) == 1
    assert state.record([b"ccc"]) == 3
    assert (state.sent, state.unacknowledged, state.replay_bytes) == (3, 3, 6)
    assert state.acknowledge(2)
    assert (state.peer_acked, state.unacknowledged, state.replay_bytes) == (2, 1, 3)
    assert state.acknowledge(1)  # an old acknowledgement changes nothing
    assert state.peer_acked == 2
    assert not state.acknowledge(4)  # beyond what was sent: a broken peer


def test_the_window_closes_at_the_limit_and_opens_on_acknowledgement() -> None:
    state = SessionState(MIN_REPLAY_BUFFER)
    half = b"x" * (MIN_REPLAY_BUFFER // 2)
    state.record([half])
    assert state.window_open
    state.record([half])
    assert not state.window_open
    state.acknowledge(1)
    assert state.window_open


def test_resume_replays_what_the_peer_did_not_deliver() -> None:
    state = SessionState()
    state.record([b"1", b"2", b"3", b"4"])
    state.acknowledge(1)
    assert not state.can_resume(0)  # it acknowledged 1 already: 1 is gone
    assert not state.can_resume(5)  # never sent
    assert state.resume(2) == [(3, b"3"), (4, b"4")]
    assert state.peer_acked == 2
    with pytest.raises(ValueError, match="outside"):
        state.resume(1)


def test_losing_a_session_counts_the_unacknowledged_and_starts_over() -> None:
    state = SessionState()
    state.session = "s1"
    state.record([b"1", b"2", b"3"])
    state.acknowledge(1)
    state.delivered = 7
    assert state.lose() == 2
    assert (state.session, state.next_seq, state.peer_acked, state.delivered) == (None, 1, 0, 0)
    assert state.replay_bytes == 0


class Tally:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


def test_receipts_of_numbered_messages_are_let_go_once_persisted_in_order() -> None:
    state = SessionState()
    tallies = [Tally() for _ in range(3)]
    receipts = [Receipt(tally) for tally in tallies]
    state.record([b"a", b"b"], receipts[:2])  # 1, 2
    state.record([b"c"], receipts[2:])  # 3
    for receipt in receipts:
        receipt.release()  # the deliverer's hold: the session holds them now
    assert state.needs_persisting
    assert state.unpersisted() == [(1, b"a"), (2, b"b"), (3, b"c")]
    assert state.receipts_upto(2) == receipts[:2]
    state.persisted_upto(2)
    assert [t.calls for t in tallies] == [1, 1, 0]
    assert state.unpersisted() == [(3, b"c")]
    state.persisted_upto(3)
    assert [t.calls for t in tallies] == [1, 1, 1]
    assert not state.needs_persisting
    state.persisted_upto(3)  # again: nothing more
    assert [t.calls for t in tallies] == [1, 1, 1]


def test_a_lost_session_never_lets_go_of_what_it_did_not_persist() -> None:
    state = SessionState()
    tally = Tally()
    receipt = Receipt(tally)
    state.record([b"a"], [receipt])
    receipt.release()
    state.lose()
    state.persisted_upto(5)
    assert tally.calls == 0
    assert not state.needs_persisting


def test_taking_over_replays_what_the_peer_did_not_receive_with_its_numbers() -> None:
    state = SessionState()
    sent = [(3, b"c"), (4, b"d"), (5, b"e")]  # what the other instance kept (1, 2 acked)
    state.take_over("s1", 3, 7, sent)  # the peer received 3; the other side delivered 7
    assert (state.session, state.delivered, state.peer_acked) == ("s1", 7, 3)
    assert state.resume(3) == [(4, b"d"), (5, b"e")]
    assert state.record([b"f"]) == 6  # numbered on after what is replayed
    assert state.unpersisted() == [(6, b"f")]  # what was taken over is kept already


def test_taking_over_replays_nothing_after_a_gap() -> None:
    state = SessionState()
    state.take_over("s1", 3, 0, [(5, b"e"), (6, b"f")])  # 4 is missing
    assert state.resume(3) == []
    assert state.record([b"x"]) == 4


def test_a_replay_buffer_below_the_minimum_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="replay_buffer_size"):
        SessionState(1024)


# -- frames -----------------------------------------------------------------------------------


def test_sequenced_ack_and_welcome_frames_round_trip() -> None:
    frame = decode_frame(encode_sequenced(5, 3, [b"one", b"two"]))
    assert (frame.kind, frame.seq, frame.token) == (FrameKind.SEQUENCED, 5, 3)
    assert [bytes(p) for p in frame.payloads] == [b"one", b"two"]
    assert decode_frame(encode_ack(9)).token == 9
    welcome = Welcome("abc", True, 12)
    assert decode_frame(encode_welcome(welcome)).welcome == welcome


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(encode_sequenced(0, 0, [b"x"]), id="seq-zero"),
        pytest.param(b"\x04\x00\x00", id="truncated-header"),
        pytest.param(encode_sequenced(1, 0, [b"xy"])[:-1], id="truncated-entry"),
        pytest.param(b"\x05\x00", id="short-ack"),
        pytest.param(b"\x06not json", id="welcome-not-json"),
        pytest.param(b'\x06{"session": 1, "resumed": true, "received": 0}', id="welcome-types"),
        pytest.param(b'\x06{"session": "s", "resumed": true, "received": -1}', id="negative"),
        pytest.param(b'\x06{"session": "s"}', id="welcome-missing"),
        pytest.param(
            b'\x06{"session": "s", "resumed": true, "received": 0, "window": -1}',
            id="welcome-window",
        ),
    ],
)
def test_broken_v2_frames_are_framing_errors(data: bytes) -> None:
    with pytest.raises(FramingError):
        decode_frame(data)


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("abc 12", ("abc", 12)),
        (format_resume_header("s-1", 0), ("s-1", 0)),
        (None, None),
        ("", None),
        ("abc", None),
        ("abc -1", None),
        ("abc 1x", None),
        ("x" * 129 + " 1", None),
        ("abc 99999999999999999999", None),
        ("abc 12 7", ("abc", 12)),
        ("abc 12 7 1", None),
        ("abc 12 x", None),
    ],
)
def test_the_resume_header(value: str | None, parsed: tuple[str, int] | None) -> None:
    assert parse_resume_header(value) == parsed


def test_the_resume_header_may_say_what_the_server_acknowledged() -> None:
    assert parse_resume_acknowledged(format_resume_header("s", 12, 7)) == 7
    assert parse_resume_acknowledged(format_resume_header("s", 12)) is None
    assert parse_resume_acknowledged("s 12 1x") is None


def test_a_server_that_keeps_sessions_prefers_v2_and_falls_back_to_v1() -> None:
    offered = subprotocols_for("json", resume=True)
    assert offered == ["busproxy.v2.json", "busproxy.v1.json"]
    assert choose_subprotocol(offered, "json", resume=True) == "busproxy.v2.json"
    assert choose_subprotocol(offered, "json") == "busproxy.v1.json"  # hand-wired: no sessions
    assert choose_subprotocol(["busproxy.v1.json"], "json", resume=True) == "busproxy.v1.json"
    assert is_resumable("busproxy.v2.json")
    assert not is_resumable("busproxy.v1.json")
    assert not is_resumable(None)
    assert subprotocols_for("json", resume=False) == ["busproxy.v1.json"]


# -- two protocols ----------------------------------------------------------------------------


def message(source: str, target: str, n: int) -> BusMessage:
    return BusJobRequestMessage(source=source, target=target, job_id=f"{source}-{n}")


def make(
    local: str,
    remote: str,
    state: SessionState | None,
    *,
    max_batch_messages: int = 64,
    framed: bool = True,
) -> LinkProtocol:
    return LinkProtocol(
        name=local,
        config=LinkConfig(max_batch_messages=max_batch_messages),
        stats=LinkStats(),
        serializer=SERIALIZER,
        rules=ForwardingRules.build(local_worker=local, remote_worker=remote),
        framed=framed,
        now=0.0,
        session=state,
    )


def controls(protocol: LinkProtocol) -> list[bytes]:
    out = []
    while (data := protocol.next_control()) is not None:
        out.append(data)
        protocol.control_written()
    return out


def deliver(protocol: LinkProtocol, frames: list[bytes]) -> list[str]:
    """Feed ``frames`` to ``protocol``, deliver all it lets in; the job ids delivered."""
    ids = []
    for data in frames:
        for msg in protocol.receive_data(data, 0.0):
            ids.append(msg.job_id)  # type: ignore[attr-defined]
            protocol.delivered_one()
    return ids


class Pair:
    """A client and a server protocol over one connection; their states outlive it."""

    def __init__(self, client: SessionState, server: SessionState, **config: Any) -> None:
        self.client = make(CLIENT, SERVER, client, **config)
        self.server = make(SERVER, CLIENT, server, **config)

    @classmethod
    def open(cls, client: SessionState, server: SessionState, **config: Any) -> Pair:
        """A new session: the server's welcome reaches the client."""
        server.session = server.session or "s1"
        pair = cls(client, server, **config)
        pair.server.welcome(resumed=False)
        assert deliver(pair.client, controls(pair.server)) == []
        return pair

    def send(self, side: LinkProtocol, messages: list[BusMessage]) -> bytes:
        return send(side, messages)


def send(side: LinkProtocol, messages: list[BusMessage]) -> bytes:
    """Pack ``messages`` as ``side`` writes them: the WebSocket message."""
    packed = side.pack(messages)
    assert packed.data is not None
    side.written(packed)
    return packed.data


def test_the_client_sends_nothing_numbered_before_the_welcome() -> None:
    client_state, server_state = SessionState(), SessionState()
    server_state.session = "s1"
    pair = Pair(client_state, server_state)
    assert not pair.client.can_send_data
    pair.server.welcome(resumed=False)
    [welcome] = controls(pair.server)
    assert decode_frame(welcome).welcome == Welcome("s1", False, 0, window=server_state.limit)
    deliver(pair.client, [welcome])
    assert pair.client.can_send_data
    assert client_state.session == "s1"
    outcome = pair.client.outcome
    assert outcome is not None
    assert (outcome.resumed, outcome.lost, outcome.previous) == (False, 0, None)


def test_numbered_messages_cross_and_acknowledgements_ride_on_the_way_back() -> None:
    client_state, server_state = SessionState(), SessionState()
    pair = Pair.open(client_state, server_state)
    frame = pair.send(pair.client, [message(CLIENT, SERVER, n) for n in range(3)])
    assert deliver(pair.server, [frame]) == ["voice-0", "voice-1", "voice-2"]
    assert server_state.delivered == 3
    assert client_state.unacknowledged == 3
    assert pair.server.ack_after_delivery() is True  # owed, not due: a timer
    # The server's next message carries the acknowledgement...
    reply = pair.send(pair.server, [message(SERVER, CLIENT, 0)])
    assert decode_frame(reply).token == 3
    pair.server.ack_timer()  # ...so when the timer fires, nothing is owed
    assert controls(pair.server) == []
    assert deliver(pair.client, [reply]) == ["worker-0"]
    assert client_state.unacknowledged == 0


def test_an_acknowledgement_goes_alone_after_enough_messages_or_on_the_timer() -> None:
    client_state, server_state = SessionState(), SessionState()
    pair = Pair.open(client_state, server_state, max_batch_messages=ACK_EVERY)
    # A few messages: owed, not due yet; the caller sets a timer.
    deliver(pair.server, [pair.send(pair.client, [message(CLIENT, SERVER, 0)])])
    assert pair.server.ack_after_delivery() is True
    assert pair.server.ack_after_delivery() is False  # one timer at a time
    assert controls(pair.server) == []
    pair.server.ack_timer()
    [ack] = controls(pair.server)
    assert decode_frame(ack).kind is FrameKind.ACK
    deliver(pair.client, [ack])
    assert client_state.unacknowledged == 0
    # ACK_EVERY messages: acknowledged at once.
    batch = [message(CLIENT, SERVER, n) for n in range(1, ACK_EVERY + 1)]
    deliver(pair.server, [pair.send(pair.client, batch)])
    assert pair.server.ack_after_delivery() is False
    [ack] = controls(pair.server)
    assert decode_frame(ack).token == ACK_EVERY + 1


def test_a_full_replay_buffer_stops_new_sends_until_acknowledged() -> None:
    client_state, server_state = SessionState(MIN_REPLAY_BUFFER), SessionState()
    pair = Pair.open(client_state, server_state)
    big = BusJobRequestMessage(
        source=CLIENT, target=SERVER, job_id="big", payload={"x": "y" * MIN_REPLAY_BUFFER}
    )
    frame = pair.send(pair.client, [big])
    assert not pair.client.can_send_data
    deliver(pair.server, [frame])
    pair.server.ack_after_delivery()  # a large frame: acknowledged at once
    deliver(pair.client, controls(pair.server))
    assert pair.client.can_send_data


def test_a_cut_connection_resumes_with_nothing_lost_or_duplicated() -> None:
    client_state, server_state = SessionState(), SessionState()
    pair = Pair.open(client_state, server_state, max_batch_messages=2)
    # Client to server: 0-1 delivered, 2-3 written but never arrived.
    deliver(pair.server, [pair.send(pair.client, [message(CLIENT, SERVER, n) for n in (0, 1)])])
    pair.send(pair.client, [message(CLIENT, SERVER, n) for n in (2, 3)])
    # Server to client: 0-1 arrived, 2 lost; nothing acknowledged either way.
    deliver(pair.client, [pair.send(pair.server, [message(SERVER, CLIENT, n) for n in (0, 1)])])
    pair.send(pair.server, [message(SERVER, CLIENT, 2)])
    # The connection breaks. The client reconnects naming what it delivered (the header).
    header = parse_resume_header(format_resume_header("s1", client_state.delivered))
    assert header == ("s1", 2)
    assert server_state.can_resume(header[1])
    again = Pair(client_state, server_state, max_batch_messages=2)
    again.server.welcome(resumed=True, peer_delivered=header[1])
    assert deliver(again.client, controls(again.server)) == ["worker-2"]
    outcome = again.client.outcome
    assert outcome is not None
    assert (outcome.resumed, outcome.lost) == (True, 0)
    assert again.client.stats.resumes == 1
    # The client replays what the server did not deliver, ahead of anything new.
    replay = controls(again.client)
    new = again.send(again.client, [message(CLIENT, SERVER, 4)])
    assert deliver(again.server, [*replay, new]) == ["voice-2", "voice-3", "voice-4"]
    assert again.client.stats.replayed == 2
    assert again.server.stats.replayed == 1


def test_what_arrives_twice_is_delivered_once() -> None:
    client_state, server_state = SessionState(), SessionState()
    pair = Pair.open(client_state, server_state)
    frame = pair.send(pair.client, [message(CLIENT, SERVER, n) for n in range(3)])
    assert deliver(pair.server, [frame]) == ["voice-0", "voice-1", "voice-2"]
    # The same numbers again (a replay of what had arrived), then one new one.
    assert deliver(pair.server, [frame]) == []
    overlapping = encode_sequenced(
        3, 0, [SERIALIZER.serialize(message(CLIENT, SERVER, n)) for n in (2, 3)]
    )
    assert deliver(pair.server, [overlapping]) == ["voice-3"]
    assert pair.server.stats.duplicates == 4


def test_a_message_cut_before_delivery_is_not_acknowledged() -> None:
    client_state, server_state = SessionState(), SessionState()
    pair = Pair.open(client_state, server_state)
    frame = pair.send(pair.client, [message(CLIENT, SERVER, n) for n in range(3)])
    delivered = pair.server.receive_data(frame, 0.0)
    assert len(delivered) == 3
    pair.server.delivered_one()  # the link broke while delivering the second
    assert server_state.delivered == 1
    assert server_state.can_resume(0)
    assert client_state.resume(server_state.delivered) == [
        (2, SERIALIZER.serialize(message(CLIENT, SERVER, 1))),
        (3, SERIALIZER.serialize(message(CLIENT, SERVER, 2))),
    ]


def test_refused_messages_use_up_their_numbers() -> None:
    client_state, server_state = SessionState(), SessionState()
    pair = Pair.open(client_state, server_state)
    forged = [SERIALIZER.serialize(message("intruder", SERVER, n)) for n in range(2)]
    assert deliver(pair.server, [encode_sequenced(1, 0, forged)]) == []
    assert server_state.delivered == 2
    assert pair.server.stats.rejected_by_reason == {"forged_source": 2}
    good = SERIALIZER.serialize(message(CLIENT, SERVER, 0))
    assert deliver(pair.server, [encode_sequenced(3, 0, [forged[0], good])]) == ["voice-0"]
    assert server_state.delivered == 4


def test_a_lost_session_is_reported_with_what_was_never_acknowledged() -> None:
    client_state, server_state = SessionState(), SessionState()
    pair = Pair.open(client_state, server_state)
    pair.send(pair.client, [message(CLIENT, SERVER, n) for n in range(5)])
    # The server restarted: a new server, a new session.
    fresh = SessionState()
    fresh.session = "s2"
    again = Pair(client_state, fresh)
    again.server.welcome(resumed=False)
    deliver(again.client, controls(again.server))
    outcome = again.client.outcome
    assert outcome is not None
    assert (outcome.session, outcome.resumed, outcome.lost, outcome.previous) == (
        "s2",
        False,
        5,
        "s1",
    )
    assert (again.client.stats.sessions_lost, again.client.stats.lost_unacknowledged) == (1, 5)
    # Numbering starts over: the new session's first message is 1.
    frame = again.send(again.client, [message(CLIENT, SERVER, 9)])
    assert decode_frame(frame).seq == 1
    assert deliver(again.server, [frame]) == ["voice-9"]


@pytest.mark.parametrize(
    ("frames", "why"),
    [
        pytest.param(
            lambda: [encode_sequenced(2, 0, [SERIALIZER.serialize(message(CLIENT, SERVER, 0))])],
            "gap",
            id="gap",
        ),
        pytest.param(lambda: [encode_ack(7)], "ack-beyond", id="ack-beyond-sent"),
        pytest.param(lambda: [encode_welcome(Welcome("s9", False, 0))], "welcome", id="welcome"),
    ],
)
def test_a_peer_that_breaks_the_numbering_is_closed_with_1002(frames: Any, why: str) -> None:
    client_state, server_state = SessionState(), SessionState()
    pair = Pair.open(client_state, server_state)
    deliver(pair.server, frames())
    assert pair.server.close_info is not None
    assert pair.server.close_info.code == CloseCode.PROTOCOL_ERROR
    assert pair.server.stats.rejected_by_reason == {"protocol": 1}


def test_a_resumed_welcome_that_does_not_match_the_session_is_a_protocol_error() -> None:
    client_state = SessionState()
    client_state.session = "s1"
    client = make(CLIENT, SERVER, client_state)
    deliver(client, [encode_welcome(Welcome("other", True, 0))])
    assert client.close_info is not None
    assert client.close_info.code == CloseCode.PROTOCOL_ERROR


def test_numbered_frames_on_a_link_without_a_session_are_refused() -> None:
    plain = LinkProtocol(
        name="v1",
        config=LinkConfig(),
        stats=LinkStats(),
        serializer=SERIALIZER,
        rules=ForwardingRules.build(local_worker=SERVER, remote_worker=CLIENT),
        framed=True,
        now=0.0,
    )
    good = SERIALIZER.serialize(message(CLIENT, SERVER, 0))
    assert plain.receive_data(encode_sequenced(1, 0, [good]), 0.0) == []
    assert plain.receive_data(encode_ack(0), 0.0) == []
    assert plain.stats.rejected_by_reason == {"framing": 2}
    assert plain.close_info is None  # refused, counted, the link goes on
    assert [m.job_id for m in plain.receive_data(encode_message(good), 0.0)] == ["voice-0"]  # type: ignore[attr-defined]


# -- an in-band upgrade to a resumable link (a socket the app accepted itself) ------------------


def plain(local: str, remote: str, state: SessionState | None) -> LinkProtocol:
    """A protocol on a connection accepted without a subprotocol (plain until upgraded)."""
    return make(local, remote, state, framed=False)


V2, V1 = subprotocols_for("json", resume=True)


def in_band(client_state: SessionState, server_state: SessionState) -> tuple[LinkProtocol, ...]:
    """Our client offered v2 and v1; the server upgrades to v2 in band and welcomes it."""
    client = plain(CLIENT, SERVER, None)
    client.expect_upgrade((V2, V1), client_state)
    server_state.session = server_state.session or "s1"
    server = plain(SERVER, CLIENT, server_state)
    server.offer_upgrade(V2)
    server.welcome(resumed=False)
    return client, server


def test_a_client_that_may_be_upgraded_holds_its_data_until_the_server_speaks() -> None:
    client, server = in_band(SessionState(), SessionState())
    # Sent plain before the upgrade, a message would be outside the session.
    assert not client.can_send_data
    marker, welcome = controls(server)
    assert deliver(client, [marker]) == []
    [answer] = controls(client)  # the client's answer: framed from here on
    assert not client.can_send_data  # a session now, waiting for its welcome
    assert client.session is not None
    deliver(client, [welcome])
    assert client.can_send_data
    frame = send(client, [message(CLIENT, SERVER, 0)])
    assert deliver(server, [answer, frame]) == ["voice-0"]
    assert server.framed
    assert client.framed


def test_a_session_resumes_through_an_in_band_upgrade() -> None:
    client_state, server_state = SessionState(), SessionState()
    client, server = in_band(client_state, server_state)
    deliver(client, controls(server))
    deliver(server, controls(client))
    # Two messages each way are written; the connection breaks before any arrives.
    send(client, [message(CLIENT, SERVER, n) for n in (0, 1)])
    send(server, [message(SERVER, CLIENT, n) for n in (0, 1)])
    # A new connection, again accepted by the app: upgraded, resumed, replayed both ways.
    client = plain(CLIENT, SERVER, None)
    client.expect_upgrade((V2, V1), client_state)
    server = plain(SERVER, CLIENT, server_state)
    assert server_state.can_resume(client_state.delivered)
    server.offer_upgrade(V2)
    server.welcome(resumed=True, peer_delivered=client_state.delivered)
    assert deliver(client, controls(server)) == ["worker-0", "worker-1"]
    outcome = client.outcome
    assert outcome is not None
    assert outcome.resumed
    assert deliver(server, controls(client)) == ["voice-0", "voice-1"]


@pytest.mark.parametrize("first", ["plain message", "v1 marker"])
def test_a_server_that_does_not_upgrade_to_v2_ends_the_earlier_session(first: str) -> None:
    client_state = SessionState()
    client_state.session = "s1"
    client_state.record([b"never acknowledged"])
    client = plain(CLIENT, SERVER, None)
    client.expect_upgrade((V2, V1), client_state)
    if first == "v1 marker":
        server = plain(SERVER, CLIENT, None)
        server.offer_upgrade(V1)
        deliver(client, controls(server))
    else:  # a reference server: its first message is its worker's readiness
        deliver(client, [SERIALIZER.serialize(message(SERVER, CLIENT, 0))])
    assert client.can_send_data  # no session here: plain (or v1) from now on
    assert client.session is None
    outcome = client.outcome
    assert outcome is not None
    assert (outcome.resumed, outcome.lost, outcome.previous) == (False, 1, "s1")
    assert client.stats.sessions_lost == 1


# -- flow control: the receive window -----------------------------------------------------------


def test_the_welcome_gives_the_client_the_servers_window() -> None:
    client_state, server_state = SessionState(), SessionState(MIN_REPLAY_BUFFER)
    pair = Pair.open(client_state, server_state)
    assert client_state.peer_window == MIN_REPLAY_BUFFER
    # The client's own buffer is 1 MiB; it sends no more than the server takes.
    big = BusJobRequestMessage(
        source=CLIENT, target=SERVER, job_id="big", payload={"x": "y" * MIN_REPLAY_BUFFER}
    )
    send(pair.client, [big])
    assert not pair.client.can_send_data
    assert client_state.replay_bytes < client_state.limit


def test_what_is_let_in_before_earlier_messages_are_delivered_is_acknowledged_in_order() -> None:
    client_state, server_state = SessionState(), SessionState()
    pair = Pair.open(client_state, server_state)
    first = send(pair.client, [message(CLIENT, SERVER, n) for n in range(3)])
    second = send(pair.client, [message(CLIENT, SERVER, n) for n in range(3, 5)])
    # The server reads both frames while its bus is still busy with the first.
    assert len(pair.server.receive_data(first, 0.0)) == 3
    assert len(pair.server.receive_data(second, 0.0)) == 2
    assert server_state.delivered == 0
    assert pair.server.undelivered_bytes > 0
    seen = []
    for _ in range(5):
        pair.server.delivered_one()
        seen.append(server_state.delivered)
    assert seen == [1, 2, 3, 4, 5]
    assert pair.server.undelivered_bytes == 0
    pair.server.ack_timer()
    [ack] = controls(pair.server)
    assert decode_frame(ack).token == 5


def test_a_peer_that_sends_beyond_the_window_is_closed_with_1002() -> None:
    client_state, server_state = SessionState(), SessionState(MIN_REPLAY_BUFFER)
    pair = Pair.open(client_state, server_state)
    client_state.peer_window = None  # a client that ignores the server's window
    chunk = BusJobRequestMessage(
        source=CLIENT, target=SERVER, job_id="c", payload={"x": "y" * 60_000}
    )
    frames = [send(pair.client, [chunk]) for _ in range(30)]  # 1.8 MB, nothing delivered
    for frame in frames:
        pair.server.receive_data(frame, 0.0)
        if pair.server.closing:
            break
    info = pair.server.close_info
    assert info is not None
    assert info.code == CloseCode.PROTOCOL_ERROR
