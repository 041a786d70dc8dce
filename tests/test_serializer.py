"""The JSON wire format: the reference's vectors, round trips, and input from a hostile peer."""

from __future__ import annotations

import builtins
import enum
import importlib
import json
import math
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from fastapi_busproxy import messages
from fastapi_busproxy._codec import from_tree, to_tree
from fastapi_busproxy.exceptions import (
    ConfigurationError,
    MessageDecodeError,
    MessageEncodeError,
)
from fastapi_busproxy.messages import (
    BusActivateWorkerMessage,
    BusAddWorkerMessage,
    BusCancelMessage,
    BusCancelWorkerMessage,
    BusDataMessage,
    BusDeactivateWorkerMessage,
    BusEndMessage,
    BusEndWorkerMessage,
    BusFrameMessage,
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
    BusMessage,
    BusSystemMessage,
    BusWorkerErrorMessage,
    BusWorkerReadyMessage,
    BusWorkerRegistryMessage,
    FrameDirection,
    JobStatus,
    WorkerRegistryEntry,
    register_wire_type,
    wire_name_of,
)
from fastapi_busproxy.serializers import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_SIZE,
    JSONMessageSerializer,
    MessageSerializer,
)

# Real output of pipecat-ai 1.14.0 (from the reference notes on the wire format).
VECTORS = [
    b'{"__type__":"pipecat.bus.messages.BusDataMessage","__data__":{"id":0,"name":"BusDataMessage#0","source":"voice","target":"worker"}}',
    b'{"__type__":"pipecat.bus.messages.BusJobRequestMessage","__data__":{"id":1,"name":"BusJobRequestMessage#0","source":"voice","target":"worker","job_id":"3f2b6c1e-0000-4000-8000-000000000001","job_name":"research","payload":{"query":"pipecat","blob":{"__type__":"bytes","__data__":"AAE="}}}}',
    b'{"__type__":"pipecat.bus.messages.BusJobRequestMessage","__data__":{"id":2,"name":"BusJobRequestMessage#1","source":"voice","target":"worker","job_id":"3f2b6c1e-0000-4000-8000-000000000002"}}',
    b'{"__type__":"pipecat.bus.messages.BusWorkerRegistryMessage","__data__":{"id":3,"name":"BusWorkerRegistryMessage#0","source":"gateway","runner":"runner-1a2b3c4d","workers":[{"__type__":"pipecat.registry.types.WorkerRegistryEntry","__data__":{"name":"worker","active":false,"bridged":false}}]}}',
    b'{"__type__":"pipecat.bus.messages.BusWorkerRegistryMessage","__data__":{"id":4,"name":"BusWorkerRegistryMessage#1","source":"runner-1a2b3c4d","runner":"runner-1a2b3c4d","workers":[{"__type__":"pipecat.registry.types.WorkerRegistryEntry","__data__":{"name":"worker","active":true,"bridged":false,"started_at":1760000000.25}}]}}',
    b'{"__type__":"pipecat.bus.messages.BusJobResponseMessage","__data__":{"id":5,"name":"BusJobResponseMessage#0","source":"worker","target":"voice","job_id":"j1","status":"completed","response":{"answer":42}}}',
    b'{"__type__":"pipecat.bus.messages.BusActivateWorkerMessage","__data__":{"id":6,"name":"BusActivateWorkerMessage#0","source":"voice","target":"worker","args":{"metadata":{"k":"v"}}}}',
]  # fmt: skip

VECTOR_MESSAGES: list[BusMessage] = [
    BusDataMessage(source="voice", target="worker"),
    BusJobRequestMessage(
        source="voice",
        target="worker",
        job_id="3f2b6c1e-0000-4000-8000-000000000001",
        job_name="research",
        payload={"query": "pipecat", "blob": b"\x00\x01"},
    ),
    BusJobRequestMessage(
        source="voice", target="worker", job_id="3f2b6c1e-0000-4000-8000-000000000002"
    ),
    BusWorkerRegistryMessage(
        source="gateway", runner="runner-1a2b3c4d", workers=[WorkerRegistryEntry(name="worker")]
    ),
    BusWorkerRegistryMessage(
        source="runner-1a2b3c4d",
        runner="runner-1a2b3c4d",
        workers=[WorkerRegistryEntry(name="worker", active=True, started_at=1760000000.25)],
    ),
    BusJobResponseMessage(
        source="worker",
        target="voice",
        job_id="j1",
        status=JobStatus.COMPLETED,
        response={"answer": 42},
    ),
    BusActivateWorkerMessage(source="voice", target="worker", args={"metadata": {"k": "v"}}),
]


def without_id_and_name(vector: bytes) -> bytes:
    """The vector as an older peer writes it, re-serialized the reference's way (stdlib json)."""
    tree = json.loads(vector)
    del tree["__data__"]["id"], tree["__data__"]["name"]
    return json.dumps(tree, separators=(",", ":")).encode()


# --- user-defined wire types -----------------------------------------------------------------


class Lang(str, enum.Enum):
    EN = "en"
    FR = "fr"


@register_wire_type
class Priority(enum.Enum):
    LOW = 1
    HIGH = 2


class Color(enum.Enum):  # deliberately not registered
    RED = 1


@register_wire_type
@dataclass(kw_only=True)
class TextFrame:
    text: str
    pts: int | None = None


@dataclass(kw_only=True)
class Unregistered:
    x: int


@dataclass(kw_only=True)
class Transcript(BusDataMessage):
    text: str
    seq: int = 0
    confidence: float | None = None
    words: list[str] = field(default_factory=list)
    audio: bytes | None = None
    lang: Lang = Lang.EN
    priority: Priority = Priority.LOW
    extra: dict[str, Any] | None = None


@dataclass(kw_only=True)
class Checked(BusDataMessage):
    count: int

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError("count must not be negative")


SERIALIZER = JSONMessageSerializer()


def message_json(type_name: str, data: dict[str, Any]) -> bytes:
    return json.dumps({"__type__": type_name, "__data__": data}, separators=(",", ":")).encode()


def request_json(**payload: Any) -> bytes:
    return message_json(
        "pipecat.bus.messages.BusJobRequestMessage",
        {"source": "peer", "job_id": "j", "payload": payload},
    )


def decode_error(data: bytes | str, serializer: JSONMessageSerializer = SERIALIZER) -> str:
    with pytest.raises(MessageDecodeError) as info:
        serializer.deserialize(data)
    return str(info.value)


def encode_error(message: BusMessage, serializer: JSONMessageSerializer = SERIALIZER) -> str:
    with pytest.raises(MessageEncodeError) as info:
        serializer.serialize(message)
    return str(info.value)


# --- the reference's vectors -----------------------------------------------------------------


@pytest.mark.parametrize(("vector", "expected"), list(zip(VECTORS, VECTOR_MESSAGES, strict=True)))
def test_reference_vector_decodes_with_and_without_id_and_name(
    vector: bytes, expected: BusMessage
) -> None:
    for data in (vector, without_id_and_name(vector)):
        message = SERIALIZER.deserialize(data)
        assert type(message) is type(expected)
        assert message == expected


@pytest.mark.parametrize("vector", VECTORS)
def test_reencoding_a_vector_gives_its_bytes_without_id_and_name(vector: bytes) -> None:
    assert SERIALIZER.serialize(SERIALIZER.deserialize(vector)) == without_id_and_name(vector)


def test_older_peer_vector_is_exact() -> None:
    data = SERIALIZER.serialize(BusDataMessage(source="voice", target="worker"))
    assert data == (
        b'{"__type__":"pipecat.bus.messages.BusDataMessage",'
        b'"__data__":{"source":"voice","target":"worker"}}'
    )


def test_decoded_values_have_the_annotated_types() -> None:
    response = SERIALIZER.deserialize(VECTORS[5])
    assert isinstance(response, BusJobResponseMessage)
    assert response.status is JobStatus.COMPLETED
    registry = SERIALIZER.deserialize(VECTORS[4])
    assert isinstance(registry, BusWorkerRegistryMessage)
    assert type(registry.workers[0]) is WorkerRegistryEntry
    request = SERIALIZER.deserialize(VECTORS[1])
    assert isinstance(request, BusJobRequestMessage)
    assert request.payload == {"query": "pipecat", "blob": b"\x00\x01"}


# --- round trips -----------------------------------------------------------------------------

BUILTIN_SAMPLES: list[BusMessage] = [
    BusDataMessage(source="a", target="b"),
    BusSystemMessage(source="a"),
    BusFrameMessage(
        source="a", frame={"text": "hi", "n": 1}, direction=FrameDirection.DOWNSTREAM, bridge="x"
    ),
    BusActivateWorkerMessage(source="a", target="b", args={"k": [1, 2.5, None, True, "s"]}),
    BusDeactivateWorkerMessage(source="a", target="b"),
    BusEndMessage(source="a", reason="done"),
    BusEndWorkerMessage(source="a", target="b", reason="done"),
    BusWorkerReadyMessage(
        source="w", runner="r", parent="p", active=True, bridged=True, started_at=1.5
    ),
    BusCancelMessage(source="a", reason="stop"),
    BusCancelWorkerMessage(source="a", target="b"),
    BusWorkerRegistryMessage(
        source="a",
        runner="r",
        workers=[
            WorkerRegistryEntry(name="w1", parent="p", active=True, bridged=True, started_at=2.0),
            WorkerRegistryEntry(name="w2"),
        ],
    ),
    BusWorkerErrorMessage(source="a", error="boom"),
    BusJobRequestMessage(source="a", target="b", job_id="j", job_name="n", payload={"q": "x"}),
    BusJobResponseMessage(source="b", target="a", job_id="j", status=JobStatus.FAILED),
    BusJobResponseUrgentMessage(
        source="b", job_id="j", status=JobStatus.CANCELLED, response={"why": None}
    ),
    BusJobUpdateMessage(source="b", job_id="j", update={"progress": 0.5}),
    BusJobUpdateUrgentMessage(source="b", job_id="j", update={}),
    BusJobUpdateRequestMessage(source="a", job_id="j"),
    BusJobStreamStartMessage(source="b", job_id="j", data={"n": 3}),
    BusJobStreamDataMessage(source="b", job_id="j", data={"chunk": b"\x00\xff"}),
    BusJobStreamEndMessage(source="b", job_id="j"),
    BusJobCancelMessage(source="a", target="b", job_id="j", reason="enough"),
]


def test_samples_cover_every_builtin_message_type() -> None:
    builtin = {
        obj
        for obj in vars(messages).values()
        if isinstance(obj, type)
        and issubclass(obj, BusMessage)
        and (wire_name_of(obj) or "").startswith("pipecat.bus.messages.")
        and not issubclass(obj, messages.BusLocalMessage)
    }
    assert builtin == {type(sample) for sample in BUILTIN_SAMPLES}


@pytest.mark.parametrize("message", BUILTIN_SAMPLES, ids=lambda m: type(m).__name__)
def test_builtin_message_round_trips(message: BusMessage) -> None:
    data = SERIALIZER.serialize(message)
    decoded = SERIALIZER.deserialize(data)
    assert type(decoded) is type(message)
    assert decoded == message
    assert SERIALIZER.serialize(decoded) == data
    assert json.loads(data)["__type__"] == "pipecat.bus.messages." + type(message).__name__


def test_user_message_round_trips_under_its_module_path() -> None:
    message = Transcript(
        source="stt",
        target="llm",
        text="hello",
        seq=3,
        confidence=0.75,
        words=["hel", "lo"],
        audio=b"\x01\x02\x03",
        lang=Lang.FR,
        priority=Priority.HIGH,
        extra={"nested": {"list": [b"\xff", None]}},
    )
    data = SERIALIZER.serialize(message)
    tree = json.loads(data)
    assert tree["__type__"] == f"{__name__}.Transcript"
    assert tree["__data__"]["lang"] == "fr"
    assert tree["__data__"]["priority"] == {"__type__": f"{__name__}.Priority", "__data__": "HIGH"}
    decoded = SERIALIZER.deserialize(data)
    assert decoded == message
    assert isinstance(decoded, Transcript)
    assert decoded.lang is Lang.FR
    assert decoded.priority is Priority.HIGH


def test_fields_are_written_in_declaration_order_without_none() -> None:
    message = Transcript(source="s", text="t", confidence=None)
    tree = json.loads(SERIALIZER.serialize(message))
    assert list(tree["__data__"]) == ["source", "text", "seq", "words", "lang", "priority"]


def test_none_inside_a_dict_stays_null() -> None:
    data = SERIALIZER.serialize(BusJobUpdateMessage(source="s", job_id="j", update={"x": None}))
    assert b'"update":{"x":null}' in data


def test_bytes_at_depth() -> None:
    payload = {"a": [{"b": [b"\x00\xfe\xff", "text"]}], "top": b""}
    message = BusJobRequestMessage(source="s", job_id="j", payload=payload)
    data = SERIALIZER.serialize(message)
    assert b'{"b":[{"__type__":"bytes","__data__":"AP7/"},"text"]}' in data
    assert b'"top":{"__type__":"bytes","__data__":""}' in data
    assert SERIALIZER.deserialize(data) == message


def test_bytes_stay_native_when_asked() -> None:
    message = BusJobRequestMessage(source="s", job_id="j", payload={"b": [b"\x00"]})
    tree = to_tree(message, bytes_as_base64=False)
    assert tree["__data__"]["payload"] == {"b": [b"\x00"]}
    assert from_tree(tree, allowed=None, max_depth=DEFAULT_MAX_DEPTH) == message


def test_frame_message_with_registered_frame_and_direction() -> None:
    message = BusFrameMessage(
        source="a", frame=TextFrame(text="hi", pts=7), direction=FrameDirection.UPSTREAM
    )
    data = SERIALIZER.serialize(message)
    tree = json.loads(data)
    assert tree["__data__"]["frame"] == {
        "__type__": f"{__name__}.TextFrame",
        "__data__": {"text": "hi", "pts": 7},
    }
    assert tree["__data__"]["direction"] == {
        "__type__": "pipecat.processors.frame_processor.FrameDirection",
        "__data__": "UPSTREAM",
    }
    decoded = SERIALIZER.deserialize(data)
    assert isinstance(decoded, BusFrameMessage)
    assert type(decoded.frame) is TextFrame
    assert decoded.frame == TextFrame(text="hi", pts=7)
    assert decoded.direction is FrameDirection.UPSTREAM


def test_absent_field_that_accepts_none_is_none() -> None:
    # Writers leave None out, so a None frame must come back as None rather than "missing".
    message = BusFrameMessage(source="a", frame=None, direction=FrameDirection.DOWNSTREAM)
    assert b'"frame"' not in SERIALIZER.serialize(message)
    assert SERIALIZER.deserialize(SERIALIZER.serialize(message)) == message


def test_int_is_accepted_for_float() -> None:
    data = message_json(
        "pipecat.bus.messages.BusWorkerReadyMessage",
        {"source": "w", "runner": "r", "started_at": 5},
    )
    message = SERIALIZER.deserialize(data)
    assert isinstance(message, BusWorkerReadyMessage)
    assert message.started_at == 5.0
    assert type(message.started_at) is float


def test_str_enum_in_a_free_value_is_a_bare_string() -> None:
    message = BusJobUpdateMessage(source="s", job_id="j", update={"status": JobStatus.ERROR})
    assert b'"update":{"status":"error"}' in SERIALIZER.serialize(message)


def test_non_ascii_is_utf8_and_escaped_input_is_read() -> None:
    message = BusEndMessage(source="s", reason="café ☕")
    data = SERIALIZER.serialize(message)
    assert "café ☕".encode() in data
    escaped = json.dumps(json.loads(data), separators=(",", ":")).encode()  # the reference's way
    assert b"\\u00e9" in escaped
    assert SERIALIZER.deserialize(escaped) == message


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview, lambda b: b.decode()])
def test_accepted_input_types(wrap: Any) -> None:
    assert SERIALIZER.deserialize(wrap(VECTORS[0])) == VECTOR_MESSAGES[0]


def test_unknown_fields_are_ignored_and_never_built() -> None:
    data = message_json(
        "pipecat.bus.messages.BusEndMessage",
        {"id": 9, "name": "x", "source": "s", "later": {"__type__": "os.system", "__data__": {}}},
    )
    assert SERIALIZER.deserialize(data) == BusEndMessage(source="s")


def test_annotation_that_does_not_resolve_takes_any_wire_value() -> None:
    @dataclass(kw_only=True)
    class Hidden:  # local to this function: the string annotation below cannot resolve
        n: int

    @dataclass(kw_only=True)
    class WithHidden(BusDataMessage):
        hidden: Hidden | None = None
        count: int = 0

    register_wire_type(Hidden, "test.Hidden")
    message = WithHidden(source="s", hidden=Hidden(n=1), count=2)
    data = SERIALIZER.serialize(message)
    assert SERIALIZER.deserialize(data) == message
    # The fields that do resolve are still checked.
    assert "WithHidden.count: expected an integer" in decode_error(data.replace(b"2}", b'"2"}'))


def test_content_type_and_defaults() -> None:
    assert isinstance(SERIALIZER, MessageSerializer)
    assert SERIALIZER.content_type == "json"
    assert SERIALIZER.max_size == DEFAULT_MAX_SIZE == 1_048_576
    assert SERIALIZER.max_depth == DEFAULT_MAX_DEPTH == 32
    assert SERIALIZER.allowed_types is None


# --- hostile input: nothing is ever imported -------------------------------------------------


@contextmanager
def imports_recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    calls: list[str] = []
    real_import = builtins.__import__
    real_import_module = importlib.import_module

    def spy_import(name: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(name)
        return real_import(name, *args, **kwargs)

    def spy_import_module(name: str, package: str | None = None) -> Any:
        calls.append(name)
        return real_import_module(name, package)

    with monkeypatch.context() as patch:
        patch.setattr(builtins, "__import__", spy_import)
        patch.setattr(importlib, "import_module", spy_import_module)
        calls.clear()  # setattr() itself imports lazily
        yield calls


HOSTILE_NAMES = [
    "this.s",
    "xml.dom.minidom.parseString",
    "smtplib.SMTP",
    "os.system",
    "subprocess.Popen",
    "builtins.eval",
    "pydantic.main.BaseModel",
    "fastapi_busproxy.messages.BusMessage",
    "fastapi_busproxy.messages.BusDataMessage",  # real, but registered under another name
    "fastapi_busproxy.messages.Overflow",
    "pipecat.bus.messages.BusMessage",  # the base class is not a wire type
    "pipecat.bus.messages.NoSuchMessage",
    f"{__name__}.Unregistered",
    "",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
@pytest.mark.parametrize("where", ["top", "nested"])
def test_unregistered_type_names_are_refused_without_importing(
    name: str, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if where == "top":
        data = message_json(name, {"source": "x", "command": "echo pwned"})
    else:
        data = request_json(evil={"__type__": name, "__data__": {"args": ["echo pwned"]}})
    SERIALIZER.deserialize(request_json(warm="up"))  # compile the plans outside the spy
    module = name.rsplit(".", 1)[0]
    was_loaded = module in sys.modules
    error: MessageDecodeError | None = None
    with imports_recorded(monkeypatch) as imports:
        try:
            SERIALIZER.deserialize(data)
        except MessageDecodeError as exc:
            error = exc
    assert imports == []
    assert error is not None
    message = str(error)
    assert (module in sys.modules) == was_loaded
    assert f"unknown type {name!r}" in message
    if where == "nested":
        assert "BusJobRequestMessage.payload['evil']" in message


def test_registered_non_message_dataclass_is_refused_at_top_level() -> None:
    data = message_json("pipecat.registry.types.WorkerRegistryEntry", {"name": "phantom"})
    assert "WorkerRegistryEntry is registered but is not a message type" in decode_error(data)
    frame = message_json(f"{__name__}.TextFrame", {"text": "hi"})
    assert "is not a message type" in decode_error(frame)
    raw = message_json("bytes", "AAE=")  # type: ignore[arg-type]
    assert "'bytes' is not a message type" in decode_error(raw)


def test_local_only_message_is_refused() -> None:
    data = message_json("pipecat.bus.messages.BusAddWorkerMessage", {"source": "x", "worker": 1})
    assert "BusAddWorkerMessage is local-only" in decode_error(data)
    nested = request_json(x={"__type__": "pipecat.bus.messages.BusAddWorkerMessage",
                              "__data__": {"source": "x", "worker": 1}})  # fmt: skip
    assert "local-only" in decode_error(nested)


def test_allowlist_takes_listed_types_and_their_subclasses() -> None:
    only_requests = JSONMessageSerializer(allowed_types=[BusJobRequestMessage])
    assert only_requests.deserialize(VECTORS[1]) == VECTOR_MESSAGES[1]
    assert "BusDataMessage is not among the allowed" in decode_error(VECTORS[0], only_requests)
    # A message smuggled inside a value is held to the same list.
    smuggled = request_json(x={"__type__": "pipecat.bus.messages.BusEndMessage",
                               "__data__": {"source": "x"}})  # fmt: skip
    assert "BusEndMessage is not among the allowed" in decode_error(smuggled, only_requests)

    system_only = JSONMessageSerializer(allowed_types=[BusSystemMessage])
    cancel = SERIALIZER.serialize(BusCancelMessage(source="a"))
    assert system_only.deserialize(cancel) == BusCancelMessage(source="a")
    end = SERIALIZER.serialize(BusEndMessage(source="a"))
    assert "not among the allowed" in decode_error(end, system_only)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"[]", "got an array"),
        (b'"pipecat.bus.messages.BusDataMessage"', "got a string"),
        (b"42", "got an integer"),
        (b"null", "got null"),
        (b"true", "got a boolean"),
        (b'{"__data__":{"source":"x"}}', "got no __type__"),
        (b'{"__type__":5,"__data__":{}}', "__type__ must be a string"),
        (b'{"__type__":["os.system"],"__data__":{}}', "__type__ must be a string"),
        (b'{"__type__":"pipecat.bus.messages.BusDataMessage"}', "has no __data__"),
    ],
)
def test_top_level_must_be_a_typed_object(data: bytes, expected: str) -> None:
    assert expected in decode_error(data)


@pytest.mark.parametrize("data", [[], "x", None, 3])
def test_data_must_be_an_object(data: Any) -> None:
    message = decode_error(message_json("pipecat.bus.messages.BusDataMessage", data))
    assert "BusDataMessage: __data__ must be an object" in message


def test_missing_required_fields_are_named() -> None:
    data = message_json("pipecat.bus.messages.BusJobResponseMessage", {"source": "w"})
    assert "missing required fields: job_id, status" in decode_error(data)
    no_source = message_json("pipecat.bus.messages.BusDataMessage", {"target": "w"})
    assert "BusDataMessage: missing required field: source" in decode_error(no_source)
    entry = message_json(
        "pipecat.bus.messages.BusWorkerRegistryMessage",
        {"source": "s", "runner": "r", "workers": [
            {"__type__": "pipecat.registry.types.WorkerRegistryEntry", "__data__": {}}]},
    )  # fmt: skip
    assert "workers[0]: missing required field: name" in decode_error(entry)


def registry_json(workers: Any) -> bytes:
    return message_json(
        "pipecat.bus.messages.BusWorkerRegistryMessage",
        {"source": "s", "runner": "r", "workers": workers},
    )


def entry(**data: Any) -> dict[str, Any]:
    return {"__type__": "pipecat.registry.types.WorkerRegistryEntry", "__data__": data}


def transcript_json(**data: Any) -> bytes:
    return message_json(f"{__name__}.Transcript", {"source": "s", "text": "t", **data})


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            message_json("pipecat.bus.messages.BusJobUpdateRequestMessage",
                         {"source": "s", "job_id": 5}),
            "BusJobUpdateRequestMessage.job_id: expected a string, got 5",
        ),
        (
            message_json("pipecat.bus.messages.BusDataMessage", {"source": True}),
            "BusDataMessage.source: expected a string, got True",
        ),
        (transcript_json(seq="3"), "Transcript.seq: expected an integer, got '3'"),
        (transcript_json(seq=True), "Transcript.seq: expected an integer, got True"),
        (transcript_json(seq=1.5), "Transcript.seq: expected an integer, got 1.5"),
        (transcript_json(confidence="high"), "Transcript.confidence: expected a number"),
        (transcript_json(confidence=False), "Transcript.confidence: expected a number"),
        (transcript_json(words="abc"), "Transcript.words: expected an array, got a string"),
        (transcript_json(words=["a", 2]), "Transcript.words[1]: expected a string, got 2"),
        (transcript_json(lang="de"), "Transcript.lang: 'de' is not a valid Lang"),
        (transcript_json(priority="HIGH"), "Transcript.priority: expected a Priority"),
        (
            transcript_json(priority={"__type__": f"{__name__}.Priority", "__data__": "MAX"}),
            "Transcript.priority: 'MAX' is not a member of Priority",
        ),
        (
            transcript_json(priority={"__type__": f"{__name__}.Lang", "__data__": "EN"}),
            f"unknown type '{__name__}.Lang'",
        ),
        (transcript_json(audio="AAE="), "Transcript.audio: expected an object with __type__"),
        (
            transcript_json(audio={"__type__": "bytes", "__data__": "not base64!"}),
            "Transcript.audio: bytes are not valid base64",
        ),
        (transcript_json(extra=[1]), "Transcript.extra: expected an object, got an array"),
        (
            transcript_json(extra={"__type__": "bytes", "__data__": ""}),
            "Transcript.extra: expected an object, got a typed value ('bytes')",
        ),
        (registry_json({}), "BusWorkerRegistryMessage.workers: expected an array, got an object"),
        (registry_json([{"name": "w"}]), "workers[0]: expected an object with __type__"),
        (registry_json([entry(name="w", active="yes")]), "workers[0].active: expected a boolean"),
        (registry_json([entry(name="w", started_at="now")]), "workers[0].started_at: expected"),
        (
            registry_json([{"__type__": "pipecat.bus.messages.BusDataMessage",
                            "__data__": {"source": "s"}}]),
            "workers[0]: expected WorkerRegistryEntry, got a pipecat.bus.messages.BusDataMessage",
        ),
        (
            message_json("pipecat.bus.messages.BusJobResponseMessage",
                         {"source": "s", "job_id": "j", "status": "bogus"}),
            "BusJobResponseMessage.status: 'bogus' is not a valid JobStatus",
        ),
        (
            message_json("pipecat.bus.messages.BusJobResponseMessage",
                         {"source": "s", "job_id": "j", "status": None}),
            "BusJobResponseMessage.status: expected a JobStatus string, got None",
        ),
        (
            message_json("pipecat.bus.messages.BusFrameMessage",
                         {"source": "s", "frame": 1, "direction": "UPSTREAM"}),
            "BusFrameMessage.direction: expected a FrameDirection, got 'UPSTREAM'",
        ),
        (
            message_json("pipecat.bus.messages.BusFrameMessage",
                         {"source": "s", "frame": 1, "direction": {
                             "__type__": "pipecat.processors.frame_processor.FrameDirection",
                             "__data__": "SIDEWAYS"}}),
            "BusFrameMessage.direction: 'SIDEWAYS' is not a member of FrameDirection",
        ),
        (
            message_json("pipecat.bus.messages.BusActivateWorkerMessage",
                         {"source": "s", "args": "--all"}),
            "BusActivateWorkerMessage.args: expected an object, got a string",
        ),
    ],
)  # fmt: skip
def test_wrongly_typed_fields_are_refused_with_their_path(data: bytes, expected: str) -> None:
    assert expected in decode_error(data)


def test_long_strings_are_not_echoed_in_errors() -> None:
    data = message_json("pipecat.bus.messages.BusJobResponseMessage",
                        {"source": "s", "job_id": "j", "status": "x" * 10_000})  # fmt: skip
    message = decode_error(data)
    assert "not a valid JobStatus" in message
    assert len(message) < 300


def test_constructor_refusal_is_a_decode_error_with_its_cause() -> None:
    data = message_json(f"{__name__}.Checked", {"source": "s", "count": -1})
    with pytest.raises(MessageDecodeError, match="count must not be negative") as info:
        SERIALIZER.deserialize(data)
    assert isinstance(info.value.__cause__, ValueError)
    assert SERIALIZER.deserialize(message_json(f"{__name__}.Checked",
                                               {"source": "s", "count": 1})) == Checked(
        source="s", count=1
    )  # fmt: skip


def nested_lists(levels: int) -> Any:
    value: Any = []
    for _ in range(levels - 1):
        value = [value]
    return value


def test_ten_thousand_nested_lists_are_refused() -> None:
    deep = b"[" * 10_000 + b"]" * 10_000
    data = request_json(x=0).replace(b'{"x":0}', b'{"x":' + deep + b"}")
    # Depending on its version, orjson may stop it first (at 1024 levels).
    assert re.search("max_depth=32|depth limit", decode_error(data))
    as_frame = message_json("pipecat.bus.messages.BusFrameMessage",
                            {"source": "s", "direction": 1, "frame": 0})  # fmt: skip
    assert re.search("max_depth=32|depth limit", decode_error(as_frame.replace(b"0}", deep + b"}")))


def test_depth_limit_is_exact_and_the_same_both_ways() -> None:
    serializer = JSONMessageSerializer(max_depth=8)
    # Envelope 1, __data__ 2, payload 3, then the lists: 3 + 5 == 8.
    fits = BusJobRequestMessage(source="s", job_id="j", payload={"x": nested_lists(5)})
    too_deep = BusJobRequestMessage(source="s", job_id="j", payload={"x": nested_lists(6)})
    assert serializer.deserialize(serializer.serialize(fits)) == fits

    assert "payload['x'][0][0][0][0][0]: nested deeper than max_depth=8" in decode_error(
        SERIALIZER.serialize(too_deep), serializer
    )
    assert "nested deeper than max_depth=8" in encode_error(too_deep, serializer)


def test_oversized_input_is_refused_before_parsing() -> None:
    huge = request_json(text="x" * DEFAULT_MAX_SIZE)
    assert "over max_size=1048576" in decode_error(huge)
    assert "over max_size=1048576" in decode_error(huge.decode())
    # Not even parsed: the same size of garbage gets the same answer.
    assert "over max_size" in decode_error(b"\xff" * (DEFAULT_MAX_SIZE + 1))

    small = JSONMessageSerializer(max_size=len(VECTORS[0]))
    assert small.deserialize(VECTORS[0]) == VECTOR_MESSAGES[0]
    assert "over max_size" in decode_error(VECTORS[0] + b" ", small)
    # Text is measured in UTF-8 bytes, not characters.
    message = BusEndMessage(source="s", reason="é" * 50)
    text = SERIALIZER.serialize(message).decode()
    assert "over max_size" in decode_error(text, JSONMessageSerializer(max_size=len(text) + 10))


@pytest.mark.parametrize(
    "data",
    [
        b'{"__type__":"pipecat.bus.messages.BusDataMessage","__data__":{"source":"\xff"}}',
        b'{"__type__":"pipecat.bus.messages.BusDataMessage","__data__":{"source":"\xed\xa0\x80"}}',
    ],
)
def test_invalid_utf8_is_refused(data: bytes) -> None:
    assert "cannot parse the message as JSON: str is not valid UTF-8" in decode_error(data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b'{"__type__":',
        b'{"__type__":"pipecat.bus.messages.BusDataMessage","__data__":{"source":"x"}} trailing',
        b'{"__type__":"pipecat.bus.messages.BusDataMessage","__data__":{"source":NaN}}',
        b"{'__type__': 'pipecat.bus.messages.BusDataMessage'}",
    ],
)
def test_malformed_json_is_refused(data: bytes) -> None:
    assert "cannot parse the message as JSON" in decode_error(data)


def test_lone_surrogate_in_text_is_refused() -> None:
    text = '{"__type__":"pipecat.bus.messages.BusDataMessage","__data__":{"source":"\ud800"}}'
    assert "not valid Unicode" in decode_error(text)


def test_non_bytes_input_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="not dict"):
        SERIALIZER.deserialize({"__type__": "x"})  # type: ignore[arg-type]


# --- encode errors ---------------------------------------------------------------------------


def test_unregistered_nested_dataclass_is_not_written() -> None:
    message = BusJobRequestMessage(source="s", job_id="j", payload={"obj": Unregistered(x=1)})
    error = encode_error(message)
    assert "BusJobRequestMessage.payload['obj']" in error
    assert "Unregistered is not a wire type; register it with register_wire_type()" in error


def test_arbitrary_objects_are_not_written() -> None:
    frame = BusFrameMessage(source="s", frame=object(), direction=FrameDirection.UPSTREAM)
    error = encode_error(frame)
    assert "BusFrameMessage.frame: a object cannot be written" in error
    assert "register_wire_type()" in error
    colored = BusJobUpdateMessage(source="s", job_id="j", update={"c": [Color.RED]})
    assert "update['c'][0]: enum Color is not a wire type" in encode_error(colored)


def test_local_only_messages_are_not_written() -> None:
    error = encode_error(BusAddWorkerMessage(source="runner", worker=object()))
    assert "BusAddWorkerMessage is local-only" in error
    inner = BusAddWorkerMessage(source="runner", worker=None)
    nested = BusJobRequestMessage(source="s", job_id="j", payload={"m": inner})
    assert "payload['m']: BusAddWorkerMessage is local-only" in encode_error(nested)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({1: "x"}, "payload: dict keys must be strings, not int"),
        ({"n": {(1, 2): "x"}}, "payload['n']: dict keys must be strings, not tuple"),
        ({"__type__": "os.system"}, "the dict key '__type__' is reserved"),
        ({"f": math.nan}, "payload['f']: nan has no JSON form"),
        ({"f": [math.inf]}, "payload['f'][0]: inf has no JSON form"),
        ({"i": 2**64}, "payload['i']: the integer 18446744073709551616 does not fit in 64 bits"),
        ({"s": {1, 2}}, "payload['s']: a set cannot be written"),
    ],
)
def test_values_json_cannot_carry_are_not_written(payload: Any, expected: str) -> None:
    error = encode_error(BusJobRequestMessage(source="s", job_id="j", payload=payload))
    assert expected in error


def test_circular_value_is_an_encode_error() -> None:
    loop: list[Any] = []
    loop.append(loop)
    error = encode_error(BusJobRequestMessage(source="s", job_id="j", payload={"l": loop}))
    assert "nested deeper than max_depth=32" in error


def test_oversized_output_is_an_encode_error() -> None:
    serializer = JSONMessageSerializer(max_size=100)
    error = encode_error(BusEndMessage(source="s", reason="x" * 100), serializer)
    assert "over max_size=100" in error


def test_only_messages_are_written() -> None:
    with pytest.raises(MessageEncodeError, match="only bus messages"):
        SERIALIZER.serialize(WorkerRegistryEntry(name="w"))  # type: ignore[arg-type]


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"allowed_types": []}, "allowed_types is empty"),
        ({"allowed_types": [int]}, "takes BusMessage subclasses"),
        ({"allowed_types": [BusAddWorkerMessage]}, "BusAddWorkerMessage is local-only"),
        ({"allowed_types": BusDataMessage}, "takes an iterable"),
        ({"max_size": 0}, "max_size must be a positive int"),
        ({"max_size": True}, "max_size must be a positive int"),
        ({"max_depth": 1}, "max_depth must be an int of at least 2"),
    ],
)
def test_bad_configuration(kwargs: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigurationError, match=expected):
        JSONMessageSerializer(**kwargs)


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("__main__.Greeting", "script it runs (__main__)"),
        ("myapp.messages.Greeting", "no class Greeting of module myapp.messages"),
    ],
)
def test_an_unknown_type_says_how_classes_travel(name: str, hint: str) -> None:
    """A class defined in a script travels as ``__main__.X``: the refusal says so, and that
    the fix is a module both sides import (not a registration on the receiving side)."""
    with pytest.raises(MessageDecodeError) as caught:
        SERIALIZER.deserialize(message_json(name, {"source": "a"}))
    message = str(caught.value)
    assert hint in message
    assert "module both sides import" in message
