"""Message types shared by the test process and the ``tests.redis_node`` processes.

They live in an importable module: a class defined in a script run with ``-m`` belongs to
``__main__`` and would travel under another wire name.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi_busproxy import BusDataMessage


@dataclass(kw_only=True)
class Ping(BusDataMessage):
    n: int
