"""The messages the benchmarks send; importable by both the client and the server process.

Wire types are registered under ``"<module>.<Class>"``, so both processes must import this
module as ``bench.messages``.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi_busproxy import (
    BusDataMessage,
    ConfigurationError,
    MessageSerializer,
    MsgpackMessageSerializer,
)


@dataclass(kw_only=True)
class BenchMessage(BusDataMessage):
    """A text payload with a sequence number (latency, throughput, many links)."""

    seq: int
    data: str


@dataclass(kw_only=True)
class BenchBinary(BusDataMessage):
    """A binary payload with a sequence number (voice-like load)."""

    seq: int
    data: bytes


BENCH_TYPES = (BenchMessage, BenchBinary)


def make_serializer(name: str) -> MessageSerializer | None:
    """``None`` (the library's default, JSON) or a MessagePack serializer."""
    return None if name == "json" else MsgpackMessageSerializer()


def msgpack_available() -> bool:
    """Whether the ``msgpack`` extra is installed (``pip install -e .`` alone lacks it)."""
    try:
        MsgpackMessageSerializer()
    except ConfigurationError:
        return False
    return True
