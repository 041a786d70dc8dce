"""The Redis backend's pure parts: the key and channel scheme, the envelope, the ledger."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from fastapi_busproxy import BusDataMessage, BusMessage
from fastapi_busproxy.exceptions import MessageDecodeError
from fastapi_busproxy.interest import Interest, InterestIndex
from fastapi_busproxy.messages import wire_name_of
from fastapi_busproxy.redis.keys import KeyScheme, decode_envelope, encode_envelope
from fastapi_busproxy.redis.ledger import (
    GENERATION,
    DeliveryLedger,
    SendCounters,
    parse_record,
    record_value,
)

KEYS = KeyScheme("app")


@dataclass(kw_only=True)
class Reading(BusDataMessage):
    value: int = 0


def test_every_name_starts_with_the_prefix() -> None:
    names = [
        KEYS.control,
        KEYS.extra_channels,
        KEYS.broadcast,
        KEYS.epoch,
        KEYS.target("w"),
        KEYS.source("w"),
        KEYS.type("t"),
        KEYS.process("p"),
        KEYS.workers("p"),
        KEYS.stream("w"),
        KEYS.delivered("w"),
    ]
    assert all(name.startswith("app:") for name in names)
    assert len(set(names)) == len(names)
    assert KEYS.target_of_stream(KEYS.stream("voice:1")) == "voice:1"
    assert KEYS.pid_of_workers(KEYS.workers("abc")) == "abc"


def test_a_message_goes_to_its_targets_channel_or_in_durable_mode_its_stream_only() -> None:
    message = Reading(source="s", target="w")
    assert KEYS.channels_for(message, set()) == ["app:t:w"]
    assert KEYS.channels_for(message, set(), durable=True) == []
    assert KEYS.channels_for(Reading(source="s"), set(), durable=True) == ["app:b"]
    name = wire_name_of(Reading)
    assert name is not None
    extra = {KEYS.source("s"), KEYS.type(name), KEYS.source("other")}
    assert KEYS.channels_for(message, extra, durable=True) == [KEYS.source("s"), KEYS.type(name)]


def test_a_process_subscribes_to_what_its_subscribers_want() -> None:
    index: InterestIndex[object] = InterestIndex()
    index.add("worker", Interest.worker("w"))
    assert KEYS.wanted_channels(index) == {KEYS.control, KEYS.target("w"), KEYS.broadcast}
    index.add("observer", Interest(sources=frozenset({"s"})))
    assert KEYS.source("s") in KEYS.wanted_channels(index)
    index.add("everything", Interest(types=frozenset({BusMessage})))
    assert KEYS.wanted_channels(index) == {KEYS.control, KEYS.every_target, KEYS.broadcast}


def test_the_envelope_round_trips_and_refuses_a_bad_header() -> None:
    data = encode_envelope("p1", 7, "redis:p0", b'{"x":1}', b"00-ctx")
    envelope = decode_envelope(data)
    assert (envelope.process, envelope.seq, envelope.origin) == ("p1", 7, "redis:p0")
    assert envelope.payload == b'{"x":1}'
    assert envelope.trace_context == b"00-ctx"
    assert decode_envelope(encode_envelope("p1", 1, None, b"{}", None)).trace_context is None
    bad_headers = (b"none", b'["p", "1", null]\n{}', b'["p", true, null]\n{}', b"[1]\n{}", b"{\n")
    for bad in bad_headers:
        with pytest.raises(MessageDecodeError):
            decode_envelope(bad)


def test_the_ledger_drops_repeats_and_counts_gaps() -> None:
    ledger = DeliveryLedger()
    assert ledger.check("a", 1) == (False, 0)
    ledger.delivered("a", 1)
    assert ledger.check("a", 1) == (True, 0)  # a redelivery
    assert ledger.check("a", 2) == (False, 0)
    assert ledger.check("a", 5) == (False, 3)  # 2, 3 and 4 never came
    assert ledger.check("b", 4) == (False, 3)  # a sender first heard at 4: 1 to 3 were lost
    ledger.load({"a": 9, "c": 2})  # what an earlier reader delivered
    assert ledger.check("a", 9) == (True, 0)
    assert ledger.check("a", 10) == (False, 0)
    ledger.load({"a": 3})  # an older record does not go back
    assert ledger.check("a", 9) == (True, 0)


def test_a_new_generation_of_numbers_is_neither_a_repeat_nor_a_gap() -> None:
    ledger = DeliveryLedger()
    ledger.delivered("a", 40)
    assert ledger.check("a", GENERATION + 1) == (False, 0)
    assert ledger.check("a", GENERATION + 3) == (False, 2)
    ledger.delivered("a", GENERATION + 1)
    assert ledger.check("a", 41) == (True, 0)  # the old generation is over


def test_the_ledger_and_the_counters_are_bounded() -> None:
    ledger = DeliveryLedger(max_senders=2)
    for sender in ("a", "b", "c"):
        ledger.delivered(sender, 1)
    assert len(ledger) == 2
    counters = SendCounters(max_targets=2)
    assert [counters.next("x"), counters.next("x"), counters.next("y")] == [1, 2, 1]
    assert counters.next("z") == 1  # over the limit: x is forgotten, a new generation starts
    assert counters.next("x") == GENERATION + 1  # ...and y is forgotten now
    assert counters.next("y") == 2 * GENERATION + 1
    assert counters.next("y") == 2 * GENERATION + 2


def test_a_target_idle_longer_than_a_stream_keeps_entries_is_numbered_afresh() -> None:
    counters = SendCounters(idle_after=100.0)
    ledger = DeliveryLedger()
    for now in (0.0, 50.0, 150.0):  # 100 s between the last two: not idle yet
        seq = counters.next("x", now)
        assert ledger.check("a", seq) == (False, 0)
        ledger.delivered("a", seq)
    seq = counters.next("x", 251.0)  # idle 101 s: its record may have forgotten the sender
    assert seq == GENERATION + 1
    assert DeliveryLedger().check("a", seq) == (False, 0)  # a reader that forgot: no gap
    assert ledger.check("a", seq) == (False, 0)  # one that did not: no gap either
    assert counters.next("y", 251.0) == GENERATION + 1  # a new target: the current generation


def test_a_record_drops_the_senders_it_no_longer_needs() -> None:
    now, keep = 1_000_000, 10_000
    raw = {
        b"p1.a": record_value(7, now - 5_000).encode(),  # written 5 s ago: kept
        b"p2.b": record_value(3, now - 20_000).encode(),  # 20 s ago: stale
        b"s:abc": b"12",  # no time (an older record): kept
        b"junk": b"x:y",  # not a record's value: dropped
    }
    last, stale = parse_record(raw, now, keep)
    assert last == {"p1.a": 7, "s:abc": 12}
    assert sorted(stale) == [b"junk", b"p2.b"]
