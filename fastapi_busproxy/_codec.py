"""Conversion between bus messages and a plain tree of values, whatever the byte format.

The tree holds only dicts with ``str`` keys, lists, ``str``, ``int``, ``float``, ``bool`` and
``None`` (plus ``bytes`` when a serializer keeps them native). A dataclass or a non-``str`` enum
is written as the typed form ``{"__type__": <wire name>, "__data__": ...}`` under the name it is
registered with; ``bytes`` as ``{"__type__": "bytes", "__data__": <base64>}``. This is the tree
the reference implementation (pipecat-ai) puts in JSON.

Reading never imports anything and never looks a name up anywhere but in the registry of wire
types (:func:`~fastapi_busproxy.messages.wire_type`). Field values are checked against the
dataclass annotations, with a converter compiled once per class.

Depth counts the containers a value sits in, the value included: a message's envelope is at
depth 1, its ``__data__`` at depth 2, and so on. Writing and reading count alike, so a tree
written with a given ``max_depth`` is read back with the same limit.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import inspect
import math
import sys
import types
import typing
from collections.abc import Callable, Mapping, MutableMapping, MutableSequence, Sequence
from typing import Any, Final, Union

from .exceptions import MessageDecodeError, MessageEncodeError
from .messages import BusLocalMessage, BusMessage, wire_name_of, wire_type

__all__ = ["BYTES_TYPE", "DATA_KEY", "DEFAULT_MAX_DEPTH", "TYPE_KEY", "from_tree", "to_tree"]

DEFAULT_MAX_DEPTH: Final = 32
TYPE_KEY: Final = "__type__"
DATA_KEY: Final = "__data__"
BYTES_TYPE: Final = "bytes"

# Both JSON (orjson) and msgpack stop at 64 bits; a bigger int would fail later with a vaguer error.
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1

_NoneType: Final = type(None)
_Allowed = tuple[type[Any], ...] | None
_Converter = Callable[[object, int, _Allowed], object]


class _Invalid(Exception):
    """A value was refused; ``path`` collects where (innermost first) while unwinding."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path: list[str] = []

    def where(self) -> str:
        return "".join(reversed(self.path))


class _TooDeep(_Invalid):
    def __init__(self) -> None:
        super().__init__("nested too deeply")


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, bytes):
        return "bytes"
    return f"a {type(value).__qualname__}"


def _show(value: object) -> str:
    # Input comes from a peer and ends up in logs: never echo more than a short prefix.
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else repr(value[:57]) + "..."
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    return _kind(value)


def _key_segment(key: object) -> str:
    return f"[{_show(key)}]"


# --- writing ---------------------------------------------------------------------------------

_ENCODE_PLANS: dict[type[Any], tuple[str, ...]] = {}


def to_tree(
    message: BusMessage,
    *,
    bytes_as_base64: bool = True,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> dict[str, Any]:
    """Return ``message`` as a plain tree: ``{"__type__": name, "__data__": {...}}``.

    Fields whose value is ``None`` are left out, at every level. ``bytes_as_base64=False``
    leaves ``bytes`` as they are, for a format that carries them natively.

    Raises:
        MessageEncodeError: the message is local-only, or holds a value that cannot be written
            (an unregistered dataclass or enum, an arbitrary object, a non-``str`` dict key,
            NaN or infinity, an int beyond 64 bits), or is nested deeper than ``max_depth``.
            The message names the field and says what to do.
    """
    if not isinstance(message, BusMessage):
        raise MessageEncodeError(
            f"only bus messages can be written, not {type(message).__qualname__}"
        )
    name = type(message).__name__
    if isinstance(message, BusLocalMessage):
        raise MessageEncodeError(
            f"{name} is local-only: it carries live objects and never leaves the process; "
            "send it on the local bus only"
        )
    try:
        return _encode_dataclass(message, max_depth, bytes_as_base64)
    except _TooDeep as exc:
        raise MessageEncodeError(
            f"cannot encode {name}{exc.where()}: nested deeper than max_depth={max_depth} "
            "(a circular reference?)"
        ) from None
    except _Invalid as exc:
        raise MessageEncodeError(f"cannot encode {name}{exc.where()}: {exc.reason}") from None


def _encode_plan(cls: type[Any]) -> tuple[str, ...]:
    plan = _ENCODE_PLANS.get(cls)
    if plan is None:
        plan = tuple(f.name for f in dataclasses.fields(cls))
        _ENCODE_PLANS[cls] = plan
    return plan


def _encode_dataclass(obj: Any, budget: int, b64: bool) -> dict[str, Any]:
    cls = type(obj)
    name = wire_name_of(cls)
    if name is None:
        raise _Invalid(
            f"dataclass {cls.__qualname__} is not a wire type; "
            "register it with register_wire_type() (on both peers, under the same name)"
        )
    if isinstance(obj, BusLocalMessage):
        raise _Invalid(f"{cls.__qualname__} is local-only and cannot be written")
    # The envelope and its __data__ are two levels.
    if budget < 2:
        raise _TooDeep()
    data: dict[str, Any] = {}
    field = ""
    try:
        for field in _encode_plan(cls):
            value = getattr(obj, field)
            if value is not None:
                data[field] = _encode(value, budget - 2, b64)
    except _Invalid as exc:
        exc.path.append(f".{field}")
        raise
    return {TYPE_KEY: name, DATA_KEY: data}


def _encode(value: Any, budget: int, b64: bool) -> object:
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return value
    if kind is int:
        return _encode_int(value)
    if kind is float:
        return _encode_float(value)
    if kind is dict:
        return _encode_dict(value, budget, b64)
    if kind is list or kind is tuple:
        return _encode_list(value, budget, b64)
    if kind is bytes:
        return _encode_bytes(value, budget, b64)
    return _encode_other(value, budget, b64)


def _encode_int(value: int) -> int:
    if not _INT_MIN <= value <= _INT_MAX:
        raise _Invalid(f"the integer {value} does not fit in 64 bits; send it as a string")
    return value


def _encode_float(value: float) -> float:
    if not math.isfinite(value):
        raise _Invalid(f"{value!r} has no JSON form; use None or a string")
    return value


def _encode_bytes(value: bytes, budget: int, b64: bool) -> object:
    if not b64:
        return value
    if budget < 1:
        raise _TooDeep()
    return {TYPE_KEY: BYTES_TYPE, DATA_KEY: base64.b64encode(value).decode("ascii")}


def _encode_dict(value: dict[Any, Any], budget: int, b64: bool) -> dict[str, Any]:
    if budget < 1:
        raise _TooDeep()
    out: dict[str, Any] = {}
    for key, item in value.items():
        if type(key) is not str:
            key = _encode_key(key)
        if key == TYPE_KEY:
            # A reader would take this dict for a typed value.
            raise _Invalid(f"the dict key {TYPE_KEY!r} is reserved for typed values")
        try:
            out[key] = _encode(item, budget - 1, b64)
        except _Invalid as exc:
            exc.path.append(_key_segment(key))
            raise
    return out


def _encode_key(key: object) -> str:
    if isinstance(key, str):
        return str.__str__(key)
    raise _Invalid(f"dict keys must be strings, not {type(key).__qualname__} ({_show(key)})")


def _encode_list(value: list[Any] | tuple[Any, ...], budget: int, b64: bool) -> list[Any]:
    if budget < 1:
        raise _TooDeep()
    out: list[Any] = []
    try:
        for item in value:
            out.append(_encode(item, budget - 1, b64))
    except _Invalid as exc:
        exc.path.append(f"[{len(out)}]")
        raise
    return out


def _encode_other(value: object, budget: int, b64: bool) -> object:
    # Enums first: a str or int enum is also a str or an int.
    if isinstance(value, enum.Enum):
        if isinstance(value, str):
            return str.__str__(value)
        name = wire_name_of(type(value))
        if name is None:
            raise _Invalid(
                f"enum {type(value).__qualname__} is not a wire type; register it with "
                "register_wire_type(), or base it on str to send its values as bare strings"
            )
        if budget < 1:
            raise _TooDeep()
        return {TYPE_KEY: name, DATA_KEY: value.name}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _encode_dataclass(value, budget, b64)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return _encode_int(int.__int__(value))
    if isinstance(value, float):
        return _encode_float(float.__float__(value))
    if isinstance(value, dict):
        return _encode_dict(value, budget, b64)
    if isinstance(value, (list, tuple)):
        return _encode_list(value, budget, b64)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _encode_bytes(bytes(value), budget, b64)
    raise _Invalid(
        f"a {type(value).__qualname__} cannot be written; use str, int, float, bool, None, "
        "list, dict or bytes, or a dataclass or enum registered with register_wire_type()"
    )


# --- reading ---------------------------------------------------------------------------------

_DEFAULTED: Final = 0  # absent: the constructor's default applies
_NONE_IF_ABSENT: Final = 1  # writers leave None out, so absent means None
_REQUIRED: Final = 2

_FieldPlan = tuple[tuple[str, _Converter, int], ...]
_DECODE_PLANS: dict[type[Any], _FieldPlan] = {}
_MISSING: Final = object()


def from_tree(obj: object, *, allowed: frozenset[type[Any]] | None, max_depth: int) -> BusMessage:
    """Build the message that the tree ``obj`` describes.

    Args:
        obj: a tree as a parser produced it (for example ``orjson.loads``).
        allowed: message classes that may be built, with their subclasses; ``None`` accepts
            every registered message type. Applies to messages nested in values too.
        max_depth: deepest nesting of containers accepted, the envelope being at depth 1.

    Fields the class does not declare are ignored; an absent field whose annotation accepts
    ``None`` is set to ``None``.

    Raises:
        MessageDecodeError: ``obj`` is not a typed dict naming a registered, allowed, non-local
            message class; a required field is missing; a value does not match its annotation;
            a nested ``__type__`` is not registered; nesting exceeds ``max_depth``; or the
            class's constructor refused the fields (the original error is chained).
    """
    allowed_types = None if allowed is None else tuple(allowed)
    label = "message"
    try:
        cls, data = _typed_parts(obj, max_depth)
        if cls is bytes:
            raise _Invalid(f"{BYTES_TYPE!r} is not a message type")
        if not issubclass(cls, BusMessage):
            raise _Invalid(f"{wire_name_of(cls)} is registered but is not a message type")
        label = cls.__name__
        _check_message_class(cls, allowed_types)
        message = _build(cls, data, max_depth - 1, allowed_types)
    except _TooDeep as exc:
        raise MessageDecodeError(
            f"cannot decode {label}{exc.where()}: nested deeper than max_depth={max_depth}"
        ) from None
    except _Invalid as exc:
        raise MessageDecodeError(
            f"cannot decode {label}{exc.where()}: {exc.reason}"
        ) from exc.__cause__
    assert isinstance(message, BusMessage)
    return message


def _typed_parts(value: object, budget: int) -> tuple[type[Any], object]:
    """Return the class named by a typed dict (``bytes`` for bytes) and its ``__data__``."""
    if not isinstance(value, dict):
        raise _Invalid(f"expected an object with {TYPE_KEY} and {DATA_KEY}, got {_kind(value)}")
    if budget < 1:
        raise _TooDeep()
    name = value.get(TYPE_KEY, _MISSING)
    if name is _MISSING:
        raise _Invalid(f"expected an object with {TYPE_KEY} and {DATA_KEY}, got no {TYPE_KEY}")
    if not isinstance(name, str):
        raise _Invalid(f"{TYPE_KEY} must be a string, not {_kind(name)}")
    if DATA_KEY not in value:
        raise _Invalid(f"the {_show(name)} value has no {DATA_KEY}")
    if name == BYTES_TYPE:
        return bytes, value[DATA_KEY]
    cls = wire_type(name)
    if cls is None:
        raise _Invalid(f"unknown type {_show(name)}: {_unknown_type_hint(name)}")
    return cls, value[DATA_KEY]


def _unknown_type_hint(name: str) -> str:
    """What to do about a wire name no class here answers to."""
    if name.startswith("__main__."):
        return (
            "the peer defines the class in the script it runs (__main__); a class travels"
            " under its module's name, so define it in a module both sides import"
        )
    module, _, qualname = name.rpartition(".")
    return (
        f"no class {qualname} of module {module} is defined here (a class travels under its"
        " module and name: define it in a module both sides import, or give both sides the"
        " same name with register_wire_type(cls, name=...))"
    )


def _check_message_class(cls: type[Any], allowed: _Allowed) -> None:
    if issubclass(cls, BusLocalMessage):
        raise _Invalid(f"{cls.__qualname__} is local-only and is never accepted from a peer")
    if allowed is not None and not issubclass(cls, allowed):
        raise _Invalid(f"{cls.__qualname__} is not among the allowed message types")


def _decode_typed(value: object, budget: int, allowed: _Allowed, expected: type[Any]) -> object:
    cls, data = _typed_parts(value, budget)
    if expected is not object and not issubclass(cls, expected):
        raise _Invalid(f"expected {_describe(expected)}, got a {wire_name_of(cls) or cls.__name__}")
    if cls is bytes:
        return _decode_base64(data)
    if issubclass(cls, enum.Enum):
        member = cls.__members__.get(data) if isinstance(data, str) else None
        if member is None:
            raise _Invalid(f"{_show(data)} is not a member of {cls.__qualname__}")
        return member
    if not dataclasses.is_dataclass(cls):
        raise _Invalid(f"{cls.__qualname__} cannot be built from a tree")
    if issubclass(cls, BusMessage):
        _check_message_class(cls, allowed)
    return _build(cls, data, budget - 1, allowed)


def _decode_base64(data: object) -> bytes:
    if not isinstance(data, str):
        raise _Invalid(f"bytes must be a base64 string, not {_kind(data)}")
    try:
        return base64.b64decode(data, validate=True)
    except ValueError:  # binascii.Error, and non-ASCII text
        raise _Invalid("bytes are not valid base64") from None


def _build(cls: type[Any], data: object, budget: int, allowed: _Allowed) -> object:
    if not isinstance(data, dict):
        raise _Invalid(f"{DATA_KEY} must be an object, not {_kind(data)}")
    if budget < 1:
        raise _TooDeep()
    kwargs: dict[str, object] = {}
    missing: list[str] = []
    name = ""
    try:
        for name, convert, if_absent in _decode_plan(cls):
            value = data.get(name, _MISSING)
            if value is _MISSING:
                if if_absent == _REQUIRED:
                    missing.append(name)
                elif if_absent == _NONE_IF_ABSENT:
                    kwargs[name] = None
            else:
                kwargs[name] = convert(value, budget - 1, allowed)
    except _Invalid as exc:
        exc.path.append(f".{name}")
        raise
    if missing:
        raise _Invalid(
            f"missing required field{'s' if len(missing) > 1 else ''}: {', '.join(missing)}"
        )
    try:
        return cls(**kwargs)
    except Exception as exc:
        # A user's __post_init__ may refuse the values; that is still a bad message.
        error = _Invalid(f"{cls.__qualname__}() refused the fields: {type(exc).__name__}: {exc}")
        error.__cause__ = exc
        raise error from exc


def _decode_plan(cls: type[Any]) -> _FieldPlan:
    plan = _DECODE_PLANS.get(cls)
    if plan is None:
        plan = _compile_plan(cls)
        _DECODE_PLANS[cls] = plan
    return plan


def _compile_plan(cls: type[Any]) -> _FieldPlan:
    hints = _field_types(cls)
    plan: list[tuple[str, _Converter, int]] = []
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        convert = _compile(hints.get(field.name, Any))
        if field.default is not dataclasses.MISSING or (
            field.default_factory is not dataclasses.MISSING
        ):
            if_absent = _DEFAULTED
        elif _accepts_none(convert):
            if_absent = _NONE_IF_ABSENT
        else:
            if_absent = _REQUIRED
        plan.append((field.name, convert, if_absent))
    return tuple(plan)


def _accepts_none(convert: _Converter) -> bool:
    try:
        convert(None, 1, None)
    except _Invalid:
        return False
    return True


def _field_types(cls: type[Any]) -> dict[str, object]:
    try:
        return typing.get_type_hints(cls)
    except Exception:
        pass
    # Some annotation does not resolve (a name local to a function, say): resolve the others
    # one by one, and let the unresolvable ones take any plain value.
    hints: dict[str, object] = {}
    for field in dataclasses.fields(cls):
        hints[field.name] = _resolve_one(cls, field.name, field.type)
    return hints


def _resolve_one(cls: type[Any], name: str, annotation: object) -> object:
    if not isinstance(annotation, str):
        return annotation
    owner = next((base for base in cls.__mro__ if name in inspect.get_annotations(base)), cls)
    module = sys.modules.get(owner.__module__)
    holder = type("_Holder", (), {"__annotations__": {name: annotation}})
    try:
        hints = typing.get_type_hints(
            holder, globalns=vars(module) if module else {}, localns=dict(vars(owner))
        )
    except Exception:
        return Any
    return hints.get(name, Any)


def _describe(tp: object) -> str:
    if tp is _NoneType:
        return "null"
    if isinstance(tp, type):
        return tp.__qualname__
    return repr(tp).replace("typing.", "")


def _compile(tp: object) -> _Converter:
    """Return the converter for values annotated ``tp``; unsupported annotations take any."""
    if tp is Any or tp is object:
        return _decode_any
    if tp is None or tp is _NoneType:
        return _decode_none
    if tp is bool:
        return _decode_bool
    if tp is int:
        return _decode_int
    if tp is float:
        return _decode_float
    if tp is str:
        return _decode_str
    if tp is bytes:
        return _decode_bytes
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Union or origin is types.UnionType:
        return _union_converter(args)
    if origin is typing.Literal:
        return _literal_converter(args)
    if origin in (list, Sequence, MutableSequence) or tp in (list, Sequence, MutableSequence):
        return _list_converter(_compile(args[0]) if args else _decode_any)
    if origin in (dict, Mapping, MutableMapping) or tp in (dict, Mapping, MutableMapping):
        return _dict_converter(_compile(args[1]) if len(args) == 2 else _decode_any)
    if origin is tuple or tp is tuple:
        return _tuple_converter(args)
    if isinstance(tp, type):
        if issubclass(tp, enum.Enum) and issubclass(tp, str):
            return _str_enum_converter(tp)
        if issubclass(tp, enum.Enum) or dataclasses.is_dataclass(tp):
            return _typed_converter(tp)
    return _decode_any


def _decode_any(value: Any, budget: int, allowed: _Allowed) -> object:
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None or kind is bytes:
        return value
    if kind is float:
        return _decode_float(value, budget, allowed)
    if kind is list:
        return _decode_list_any(value, budget, allowed)
    if kind is dict:
        if TYPE_KEY in value:
            return _decode_typed(value, budget, allowed, object)
        return _decode_dict(value, budget, allowed, _decode_any)
    raise _Invalid(f"unsupported value: {_kind(value)}")


def _decode_list_any(value: list[object], budget: int, allowed: _Allowed) -> list[object]:
    return _decode_list(value, budget, allowed, _decode_any)


def _decode_list(
    value: list[object], budget: int, allowed: _Allowed, convert: _Converter
) -> list[object]:
    if budget < 1:
        raise _TooDeep()
    out: list[object] = []
    try:
        for item in value:
            out.append(convert(item, budget - 1, allowed))
    except _Invalid as exc:
        exc.path.append(f"[{len(out)}]")
        raise
    return out


def _decode_dict(
    value: dict[object, object], budget: int, allowed: _Allowed, convert: _Converter
) -> dict[str, object]:
    if budget < 1:
        raise _TooDeep()
    out: dict[str, object] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise _Invalid(f"object keys must be strings, not {_kind(key)}")
        try:
            out[key] = convert(item, budget - 1, allowed)
        except _Invalid as exc:
            exc.path.append(_key_segment(key))
            raise
    return out


def _decode_none(value: object, budget: int, allowed: _Allowed) -> None:
    if value is not None:
        raise _Invalid(f"expected null, got {_show(value)}")


def _decode_bool(value: object, budget: int, allowed: _Allowed) -> bool:
    if type(value) is not bool:
        raise _Invalid(f"expected a boolean, got {_show(value)}")
    return value


def _decode_int(value: object, budget: int, allowed: _Allowed) -> int:
    if type(value) is not int:
        raise _Invalid(f"expected an integer, got {_show(value)}")
    return value


def _decode_float(value: object, budget: int, allowed: _Allowed) -> float:
    if type(value) is float:
        if not math.isfinite(value):
            raise _Invalid(f"expected a finite number, got {value!r}")
        return value
    if type(value) is int:
        return float(value)
    raise _Invalid(f"expected a number, got {_show(value)}")


def _decode_str(value: object, budget: int, allowed: _Allowed) -> str:
    if type(value) is not str:
        raise _Invalid(f"expected a string, got {_show(value)}")
    return value


def _decode_bytes(value: object, budget: int, allowed: _Allowed) -> bytes:
    if type(value) is bytes:
        return value
    result = _decode_typed(value, budget, allowed, bytes)
    assert isinstance(result, bytes)
    return result


def _union_converter(args: tuple[object, ...]) -> _Converter:
    nullable = _NoneType in args
    options = tuple(_compile(arg) for arg in args if arg is not _NoneType)
    expected = " | ".join(_describe(arg) for arg in args)
    if len(options) == 1:
        # The usual Optional[X]: X's own error says more than a list of alternatives.
        only = options[0]

        def convert_optional(value: object, budget: int, allowed: _Allowed) -> object:
            if value is None and nullable:
                return None
            return only(value, budget, allowed)

        return convert_optional

    def convert_union(value: object, budget: int, allowed: _Allowed) -> object:
        if value is None and nullable:
            return None
        for option in options:
            try:
                return option(value, budget, allowed)
            except _TooDeep:
                raise
            except _Invalid:
                continue
        raise _Invalid(f"expected {expected}, got {_show(value)}")

    return convert_union


def _literal_converter(args: tuple[object, ...]) -> _Converter:
    def convert(value: object, budget: int, allowed: _Allowed) -> object:
        for arg in args:
            if type(arg) is type(value) and arg == value:
                return arg
        raise _Invalid(f"expected one of {', '.join(map(repr, args))}, got {_show(value)}")

    return convert


def _list_converter(item: _Converter) -> _Converter:
    def convert(value: object, budget: int, allowed: _Allowed) -> list[object]:
        if type(value) is not list:
            raise _Invalid(f"expected an array, got {_kind(value)}")
        return _decode_list(value, budget, allowed, item)

    return convert


def _dict_converter(item: _Converter) -> _Converter:
    def convert(value: object, budget: int, allowed: _Allowed) -> dict[str, object]:
        if type(value) is not dict:
            raise _Invalid(f"expected an object, got {_kind(value)}")
        if TYPE_KEY in value:
            raise _Invalid(f"expected an object, got a typed value ({_show(value[TYPE_KEY])})")
        return _decode_dict(value, budget, allowed, item)

    return convert


def _tuple_converter(args: tuple[object, ...]) -> _Converter:
    if len(args) == 2 and args[1] is Ellipsis:
        as_list = _list_converter(_compile(args[0]))

        def convert_variadic(value: object, budget: int, allowed: _Allowed) -> tuple[object, ...]:
            return tuple(typing.cast("list[object]", as_list(value, budget, allowed)))

        return convert_variadic
    if not args:
        return _list_converter(_decode_any)
    items = tuple(_compile(arg) for arg in args)

    def convert_fixed(value: object, budget: int, allowed: _Allowed) -> tuple[object, ...]:
        if type(value) is not list:
            raise _Invalid(f"expected an array, got {_kind(value)}")
        if len(value) != len(items):
            raise _Invalid(f"expected an array of {len(items)} items, got {len(value)}")
        if budget < 1:
            raise _TooDeep()
        out: list[object] = []
        try:
            for convert_item, item in zip(items, value, strict=True):
                out.append(convert_item(item, budget - 1, allowed))
        except _Invalid as exc:
            exc.path.append(f"[{len(out)}]")
            raise
        return tuple(out)

    return convert_fixed


def _str_enum_converter(cls: type[enum.Enum]) -> _Converter:
    # Own table rather than cls(value): a user's _missing_ hook must not see peer input.
    members: dict[str, enum.Enum] = {str.__str__(m): m for m in cls}
    choices = ", ".join(repr(v) for v in members)

    def convert(value: object, budget: int, allowed: _Allowed) -> enum.Enum:
        if type(value) is str:
            member = members.get(value)
            if member is None:
                raise _Invalid(
                    f"{_show(value)} is not a valid {cls.__qualname__} (expected one of {choices})"
                )
            return member
        if type(value) is dict:
            # Not what the reference writes, but unambiguous if it is registered.
            result = _decode_typed(value, budget, allowed, cls)
            assert isinstance(result, enum.Enum)
            return result
        raise _Invalid(f"expected a {cls.__qualname__} string, got {_show(value)}")

    return convert


def _typed_converter(cls: type[Any]) -> _Converter:
    # The class's own plan is looked up at call time: a dataclass may refer to itself.
    def convert(value: object, budget: int, allowed: _Allowed) -> object:
        if type(value) is not dict:
            raise _Invalid(f"expected a {cls.__qualname__}, got {_show(value)}")
        return _decode_typed(value, budget, allowed, cls)

    return convert
