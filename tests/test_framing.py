"""The framed layout of WebSocket messages: pure bytes in, frames out."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest

from fastapi_busproxy.proxy.framing import (
    SUBPROTOCOL_PREFIX,
    FrameKind,
    FramingError,
    choose_subprotocol,
    decode_frame,
    encode_batch,
    encode_message,
    encode_ping,
    encode_pong,
    subprotocol_for,
)

# A payload that contains what a length prefix and a kind byte look like, to show that the
# decoder walks by the declared lengths and never searches the bytes.
TRICKY = b"\x01" + struct.pack(">I", 5) + b"\x00\x02\x03" + struct.pack(">I", 0xFFFFFFFF)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b'{"__type__":"x","__data__":{}}', id="json"),
        pytest.param(b"", id="empty"),
        pytest.param(TRICKY, id="length-prefix-bytes"),
        pytest.param(bytes(range(256)), id="all-bytes"),
    ],
)
def test_message_round_trip(payload: bytes) -> None:
    data = encode_message(payload)
    assert data[0] == FrameKind.MESSAGE
    frame = decode_frame(data)
    assert frame.kind is FrameKind.MESSAGE
    assert [bytes(p) for p in frame.payloads] == [payload]


@pytest.mark.parametrize(
    "payloads",
    [
        pytest.param([], id="no-payloads"),
        pytest.param([b"one"], id="one"),
        pytest.param([b"a", b"bb", b"ccc"], id="three"),
        pytest.param([b"", b"x", b""], id="empty-payloads"),
        pytest.param([TRICKY, b"after", TRICKY], id="length-prefix-bytes"),
        pytest.param([b"z" * 70_000], id="longer-than-16-bits"),
    ],
)
def test_batch_round_trip(payloads: list[bytes]) -> None:
    data = encode_batch(payloads)
    assert data[0] == FrameKind.BATCH
    assert len(data) == 1 + sum(4 + len(p) for p in payloads)
    frame = decode_frame(data)
    assert frame.kind is FrameKind.BATCH
    assert [bytes(p) for p in frame.payloads] == payloads


def test_batch_layout_is_big_endian_length_then_bytes() -> None:
    assert encode_batch([b"ab", b""]) == b"\x01\x00\x00\x00\x02ab\x00\x00\x00\x00"


@pytest.mark.parametrize(
    ("encode", "kind"),
    [
        pytest.param(encode_ping, FrameKind.PING, id="ping"),
        pytest.param(encode_pong, FrameKind.PONG, id="pong"),
    ],
)
@pytest.mark.parametrize("token", [0, 1, 0x0123456789ABCDEF, 2**64 - 1])
def test_keepalive_round_trip(encode: Callable[[int], bytes], kind: FrameKind, token: int) -> None:
    data = encode(token)
    assert len(data) == 9
    assert data[0] == kind
    frame = decode_frame(data)
    assert frame.kind is kind
    assert frame.token == token
    assert list(frame.payloads) == []


def test_ping_and_pong_differ_only_in_kind() -> None:
    assert encode_ping(42)[1:] == encode_pong(42)[1:] == struct.pack(">Q", 42)
    assert encode_ping(42) != encode_pong(42)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty-frame"),
        pytest.param(b"\x01\x00\x00", id="batch-truncated-length"),
        pytest.param(b"\x01\x00\x00\x00\x05abc", id="batch-entry-past-end"),
        pytest.param(encode_batch([b"ok"]) + b"\x00", id="batch-trailing-partial-length"),
        pytest.param(encode_batch([b"abc", b"def"])[:-1], id="batch-last-entry-cut"),
        pytest.param(b"\x02" + b"\x00" * 7, id="ping-too-short"),
        pytest.param(b"\x02" + b"\x00" * 9, id="ping-too-long"),
        pytest.param(b"\x03", id="pong-no-token"),
        pytest.param(b"\x03" + b"\x00" * 16, id="pong-too-long"),
        pytest.param(b"\x04payload", id="unknown-kind-4"),
        pytest.param(b"\xff", id="unknown-kind-ff"),
        pytest.param(b"{", id="plain-json-is-not-framed"),
    ],
)
def test_malformed_frames_raise(data: bytes) -> None:
    with pytest.raises(FramingError):
        decode_frame(data)


def test_framing_error_is_a_value_error() -> None:
    assert issubclass(FramingError, ValueError)


def test_subprotocol_for_content_type() -> None:
    assert SUBPROTOCOL_PREFIX == "busproxy.v1."
    assert subprotocol_for("json") == "busproxy.v1.json"
    assert subprotocol_for("msgpack") == "busproxy.v1.msgpack"


@pytest.mark.parametrize(
    ("offered", "content_type", "chosen"),
    [
        pytest.param(["busproxy.v1.json"], "json", "busproxy.v1.json", id="exact"),
        pytest.param(
            ["chat", "busproxy.v1.msgpack", "busproxy.v1.json"],
            "json",
            "busproxy.v1.json",
            id="among-others",
        ),
        pytest.param(["busproxy.v1.msgpack"], "json", None, id="other-format"),
        pytest.param(["busproxy.v2.json"], "json", None, id="other-version"),
        pytest.param(["BUSPROXY.V1.JSON"], "json", None, id="case-sensitive"),
        pytest.param([], "json", None, id="nothing-offered"),
        pytest.param(("busproxy.v1.json",), "json", "busproxy.v1.json", id="tuple"),
    ],
)
def test_choose_subprotocol(offered: list[str], content_type: str, chosen: str | None) -> None:
    assert choose_subprotocol(offered, content_type) == chosen


def test_an_upgrade_marker_names_its_subprotocol_and_nothing_else_is_one() -> None:
    from fastapi_busproxy.proxy.framing import UPGRADE_ACK, encode_upgrade, parse_upgrade

    marker = encode_upgrade("busproxy.v1.json")
    assert parse_upgrade(marker) == "busproxy.v1.json"
    assert parse_upgrade(UPGRADE_ACK) is None
    assert parse_upgrade(b'{"type": "x"}') is None
    assert parse_upgrade(marker[:-1] + b"\xff") is None  # not ASCII
    # Neither marker decodes as a bus message of ours.
    from fastapi_busproxy import JSONMessageSerializer, MsgpackMessageSerializer
    from fastapi_busproxy.exceptions import MessageDecodeError

    for serializer in (JSONMessageSerializer(), MsgpackMessageSerializer()):
        for data in (marker, UPGRADE_ACK):
            with pytest.raises(MessageDecodeError):
                serializer.deserialize(data)
