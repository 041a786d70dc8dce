"""The Redis backend of the bus: :class:`RedisBus` (``pip install 'fastapi-busproxy[redis]'``).

One module per concept: :mod:`.keys` (the key and channel scheme and the envelope, pure),
:mod:`.ledger` (what a durable reader delivered, pure), :mod:`.replica` (the worker registry
shared between processes), :mod:`.streams` (durable delivery) and :mod:`.bus` (the bus: its
connections, pub/sub and lifecycle).
"""

from .bus import RedisBus, RedisBusStats
from .streams import DataLoss

__all__ = ["DataLoss", "RedisBus", "RedisBusStats"]
