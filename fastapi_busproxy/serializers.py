"""Serializers: a bus message to the bytes of one WebSocket message (or one publish), and back.

:class:`JSONMessageSerializer` writes the JSON of the reference implementation (pipecat-ai's
``JSONMessageSerializer``), so a reference peer reads what it writes and the other way round::

    serializer = JSONMessageSerializer()
    data = serializer.serialize(BusEndMessage(source="voice", reason="bye"))
    message = serializer.deserialize(data)

Reading is safe on input from an untrusted peer: only classes registered as wire types are
built, nothing named by the input is imported, field values are checked against the dataclass
annotations, and size and nesting are bounded.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from typing import Any, ClassVar, Final

import orjson

from ._codec import DEFAULT_MAX_DEPTH, from_tree, to_tree
from .exceptions import ConfigurationError, MessageDecodeError, MessageEncodeError
from .messages import BusLocalMessage, BusMessage

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_SIZE",
    "JSONMessageSerializer",
    "MessageSerializer",
    "MsgpackMessageSerializer",
]

DEFAULT_MAX_SIZE: Final = 1_048_576
"""Default largest encoded message, in bytes (1 MiB)."""


class MessageSerializer(abc.ABC):
    """Turns bus messages into bytes and back; one instance serves one format.

    Implementations keep no state between calls, so one instance may be shared by every link,
    task and thread.
    """

    @property
    def content_type(self) -> str | None:
        """Short name of the format (``"json"``, ``"msgpack"``), for negotiation with a peer.

        ``None`` (the default, for a serializer of your own) negotiates nothing: the link
        speaks the plain format, one message per WebSocket message.
        """
        return None

    @abc.abstractmethod
    def serialize(self, message: BusMessage) -> bytes:
        """Return ``message`` encoded as one payload.

        Raises:
            MessageEncodeError: the message is local-only, holds a value the format cannot
                carry, or is larger or more deeply nested than the serializer's limits.
        """

    @abc.abstractmethod
    def deserialize(self, data: bytes) -> BusMessage:
        """Return the message encoded in ``data``, a payload received from a peer.

        Raises:
            MessageDecodeError: ``data`` is malformed, too large or too deeply nested, names a
                type that is not registered or not allowed, or has missing or wrongly typed
                fields. Nothing the input names is imported.
        """


class _TreeSerializer(MessageSerializer):
    """Shared by the formats: limits, the allowlist, and the safe message tree of ``_codec``.

    Subclasses give the byte layer: ``_dump(tree)`` and ``_load(bytes)``.
    """

    _bytes_as_base64: ClassVar[bool] = True

    def __init__(
        self,
        *,
        allowed_types: Iterable[type[BusMessage]] | None = None,
        max_size: int = DEFAULT_MAX_SIZE,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
            raise ConfigurationError(f"max_size must be a positive int, not {max_size!r}")
        if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 2:
            raise ConfigurationError(
                f"max_depth must be an int of at least 2 (a message is two levels deep), "
                f"not {max_depth!r}"
            )
        self._allowed = _allowed_set(allowed_types)
        self._max_size = max_size
        self._max_depth = max_depth

    @property
    def allowed_types(self) -> frozenset[type[BusMessage]] | None:
        """The classes given as ``allowed_types``, or ``None`` when every type is accepted."""
        return self._allowed

    @property
    def max_size(self) -> int:
        """Largest payload read or written, in bytes."""
        return self._max_size

    @property
    def max_depth(self) -> int:
        """Deepest nesting of objects and arrays read or written."""
        return self._max_depth

    def __repr__(self) -> str:
        allowed = (
            None if self._allowed is None else sorted(cls.__qualname__ for cls in self._allowed)
        )
        return (
            f"{type(self).__name__}(allowed_types={allowed!r}, max_size={self._max_size}, "
            f"max_depth={self._max_depth})"
        )

    def serialize(self, message: BusMessage) -> bytes:
        """Return ``message`` encoded.

        Raises:
            MessageEncodeError: the message is local-only (such as
                :class:`~fastapi_busproxy.messages.BusAddWorkerMessage`); it holds a value JSON
                cannot carry (an unregistered dataclass or enum, an arbitrary object, a
                non-``str`` dict key, NaN or infinity, an int beyond 64 bits); or it is deeper
                than ``max_depth`` or larger than ``max_size`` once encoded. The message names
                the field.
        """
        tree = to_tree(message, bytes_as_base64=self._bytes_as_base64, max_depth=self._max_depth)
        data = self._dump(tree, message)
        if len(data) > self._max_size:
            raise MessageEncodeError(
                f"{type(message).__name__} is {len(data)} bytes once encoded, over "
                f"max_size={self._max_size}; a peer with the same limit would refuse it"
            )
        return data

    def deserialize(self, data: bytes | bytearray | memoryview | str) -> BusMessage:
        """Return the message encoded in ``data``.

        Text (``str``) is accepted as well as bytes, for peers that send text frames; its size
        is counted in UTF-8 bytes.

        Raises:
            MessageDecodeError: ``data`` is larger than ``max_size``, is not valid UTF-8 or
                JSON, is not a ``{"__type__", "__data__"}`` object naming a registered, allowed
                message type, has missing or wrongly typed fields, or nests deeper than
                ``max_depth``. Nothing named by the input is ever imported.
            TypeError: ``data`` is none of the accepted types (a caller's mistake, not a
                peer's).
        """
        raw: bytes | bytearray | memoryview
        if isinstance(data, str):
            # Each character is at least one UTF-8 byte: refuse huge text before copying it.
            if len(data) > self._max_size:
                raise self._too_big(len(data), "characters")
            try:
                raw = data.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise MessageDecodeError(f"the text is not valid Unicode: {exc}") from exc
            size = len(raw)
        elif isinstance(data, (bytes, bytearray)):
            raw = data
            size = len(raw)
        elif isinstance(data, memoryview):
            size = data.nbytes
            raw = data if data.c_contiguous and data.format == "B" else data.tobytes()
        else:
            raise TypeError(
                f"deserialize() takes bytes, bytearray, memoryview or str, "
                f"not {type(data).__qualname__}"
            )
        if size > self._max_size:
            raise self._too_big(size, "bytes")
        tree = self._load(raw)
        return from_tree(tree, allowed=self._allowed, max_depth=self._max_depth)

    def _too_big(self, size: int, unit: str) -> MessageDecodeError:
        return MessageDecodeError(
            f"the message is {size} {unit}, over max_size={self._max_size}; not parsed"
        )

    @abc.abstractmethod
    def _dump(self, tree: dict[str, Any], message: BusMessage) -> bytes: ...

    @abc.abstractmethod
    def _load(self, raw: bytes | bytearray | memoryview) -> object: ...


class JSONMessageSerializer(_TreeSerializer):
    """The JSON wire format of the reference implementation, written and read with orjson.

    Output is compact JSON in UTF-8, as ``{"__type__": ..., "__data__": {...}}``. Unlike the
    reference, which escapes every non-ASCII character (``\\u00e9``), non-ASCII text is written
    as UTF-8: any JSON reader, the reference's included, reads both. For ASCII content the
    bytes are exactly the reference's, minus the ``id`` and ``name`` fields pipecat-ai 1.14
    adds (which this side ignores when reading).

    Args:
        allowed_types: message classes that may be decoded; a class is accepted when it is one
            of them or a subclass of one (so ``[BusSystemMessage]`` accepts every system
            message, including ones defined later). The check also applies to messages nested
            inside values. ``None`` (the default) accepts every registered message type.
        max_size: largest payload accepted by :meth:`deserialize` and produced by
            :meth:`serialize`, in bytes; a payload over it is refused before it is parsed.
        max_depth: deepest nesting of JSON objects and arrays, the message's own envelope
            being at depth 1 and its fields' object at depth 2. Applies to both directions, so
            whatever this serializer writes, an equally configured peer can read.

    Raises:
        ConfigurationError: ``allowed_types`` is empty or lists something other than
            non-local :class:`BusMessage` subclasses; ``max_size`` or ``max_depth`` is not a
            positive int (``max_depth`` must be at least 2).

    The instance is immutable and may be shared between links, tasks and threads.
    """

    @property
    def content_type(self) -> str:
        """``"json"``."""
        return "json"

    def _dump(self, tree: dict[str, Any], message: BusMessage) -> bytes:
        try:
            return orjson.dumps(tree)
        except orjson.JSONEncodeError as exc:
            raise MessageEncodeError(f"cannot encode {type(message).__name__}: {exc}") from exc

    def _load(self, raw: bytes | bytearray | memoryview) -> object:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise MessageDecodeError(f"cannot parse the message as JSON: {exc}") from exc


class MsgpackMessageSerializer(_TreeSerializer):
    """The same messages in MessagePack: ``bytes`` travel as they are, not in base64.

    For links that carry binary payloads (audio frames), both ends of the link must use it:
    the subprotocol ``busproxy.v1.msgpack`` is negotiated, and a reference peer, which only
    speaks JSON, cannot. Needs the ``msgpack`` extra (``pip install 'fastapi-busproxy[msgpack]'``).

    Arguments, limits and safety are those of :class:`JSONMessageSerializer`; text input is
    refused (MessagePack is binary).

    Raises:
        ConfigurationError: the ``msgpack`` package is missing, or as for the JSON serializer.
    """

    _bytes_as_base64: ClassVar[bool] = False

    def __init__(
        self,
        *,
        allowed_types: Iterable[type[BusMessage]] | None = None,
        max_size: int = DEFAULT_MAX_SIZE,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        super().__init__(allowed_types=allowed_types, max_size=max_size, max_depth=max_depth)
        try:
            import msgpack
        except ImportError as exc:
            raise ConfigurationError(
                "MsgpackMessageSerializer needs msgpack: pip install 'fastapi-busproxy[msgpack]'"
            ) from exc
        self._msgpack: Any = msgpack

    @property
    def content_type(self) -> str:
        """``"msgpack"``."""
        return "msgpack"

    def deserialize(self, data: bytes | bytearray | memoryview | str) -> BusMessage:
        if isinstance(data, str):
            raise MessageDecodeError("a MessagePack message is binary; got text")
        return super().deserialize(data)

    def _dump(self, tree: dict[str, Any], message: BusMessage) -> bytes:
        try:
            return self._msgpack.packb(tree, use_bin_type=True)  # type: ignore[no-any-return]
        except (TypeError, ValueError, OverflowError) as exc:
            raise MessageEncodeError(f"cannot encode {type(message).__name__}: {exc}") from exc

    def _load(self, raw: bytes | bytearray | memoryview) -> object:
        limit = self._max_size
        try:
            return self._msgpack.unpackb(
                raw,
                raw=False,
                strict_map_key=True,
                max_str_len=limit,
                max_bin_len=limit,
                max_array_len=limit,
                max_map_len=limit,
                max_ext_len=0,
            )
        except Exception as exc:  # msgpack raises several unrelated types on bad input
            raise MessageDecodeError(f"cannot parse the message as MessagePack: {exc}") from exc


def _allowed_set(
    allowed_types: Iterable[type[BusMessage]] | None,
) -> frozenset[type[BusMessage]] | None:
    if allowed_types is None:
        return None
    try:
        allowed = frozenset(allowed_types)
    except TypeError:  # a single class rather than a list of them, say
        raise ConfigurationError(
            f"allowed_types takes an iterable of BusMessage subclasses, not {allowed_types!r}"
        ) from None
    if not allowed:
        raise ConfigurationError(
            "allowed_types is empty, so nothing could be decoded; "
            "pass None to accept every registered message type"
        )
    for cls in allowed:
        if not (isinstance(cls, type) and issubclass(cls, BusMessage)):
            raise ConfigurationError(f"allowed_types takes BusMessage subclasses, not {cls!r}")
        if issubclass(cls, BusLocalMessage):
            raise ConfigurationError(
                f"{cls.__qualname__} is local-only and is never decoded; "
                "remove it from allowed_types"
            )
    return allowed
