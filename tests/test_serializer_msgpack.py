"""MsgpackMessageSerializer: bytes travel natively; the same safety as the JSON codec."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import msgpack
import pytest

from fastapi_busproxy import (
    BusDataMessage,
    BusJobRequestMessage,
    BusWorkerRegistryMessage,
    MessageDecodeError,
    WorkerRegistryEntry,
)
from fastapi_busproxy.serializers import JSONMessageSerializer, MsgpackMessageSerializer

CODEC = MsgpackMessageSerializer()


@dataclass(kw_only=True)
class Audio(BusDataMessage):
    pcm: bytes
    rate: int = 16000


def test_round_trips_with_bytes_kept_binary() -> None:
    message = Audio(source="mic", target="stt", pcm=bytes(range(256)) * 3)
    data = CODEC.serialize(message)
    assert CODEC.deserialize(data) == message
    tree = msgpack.unpackb(data, raw=False)
    assert tree["__data__"]["pcm"] == message.pcm  # not base64
    # The JSON codec would have taken a third more for the same audio.
    assert len(data) < len(JSONMessageSerializer().serialize(message))


def test_built_in_messages_round_trip() -> None:
    for message in (
        BusJobRequestMessage(
            source="voice", target="worker", job_id="j1", payload={"blob": b"\x00\x01"}
        ),
        BusWorkerRegistryMessage(
            source="gw", runner="r", workers=[WorkerRegistryEntry(name="w", active=True)]
        ),
    ):
        assert CODEC.deserialize(CODEC.serialize(message)) == message


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"\xc1", "MessagePack"),  # a reserved byte: not MessagePack at all
        (msgpack.packb([1, 2, 3]), ""),
        (msgpack.packb({"__type__": "os.system", "__data__": {"source": "x"}}), "os.system"),
        (
            msgpack.packb(
                {"__type__": "tests.test_serializer_msgpack.Audio", "__data__": {"source": "m"}}
            ),
            "pcm",
        ),
        (
            msgpack.packb(
                {
                    "__type__": "tests.test_serializer_msgpack.Audio",
                    "__data__": {"source": "m", "pcm": "not bytes"},
                }
            ),
            "pcm",
        ),
        (msgpack.packb({1: 2}), ""),  # non-string keys
    ],
)
def test_bad_input_is_refused(data: bytes, says: str) -> None:
    modules = set(sys.modules)
    with pytest.raises(MessageDecodeError) as info:
        CODEC.deserialize(data)
    assert says in str(info.value)
    assert set(sys.modules) == modules


def test_deep_nesting_and_size_are_bounded() -> None:
    deep: object = "x"
    for _ in range(200):
        deep = [deep]
    payload = msgpack.packb(
        {
            "__type__": "pipecat.bus.messages.BusJobRequestMessage",
            "__data__": {"source": "v", "job_id": "j", "payload": {"d": deep}},
        }
    )
    with pytest.raises(MessageDecodeError, match="deep"):
        CODEC.deserialize(payload)
    small = MsgpackMessageSerializer(max_size=2048)
    with pytest.raises(MessageDecodeError, match="max_size"):
        small.deserialize(CODEC.serialize(Audio(source="m", pcm=b"x" * 4096)))


def test_text_is_refused() -> None:
    with pytest.raises(MessageDecodeError, match="binary"):
        CODEC.deserialize('{"__type__": "x"}')
