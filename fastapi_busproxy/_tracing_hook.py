"""Where the worker finds the tracer while tracing is on (:mod:`fastapi_busproxy.tracing`):
``None`` otherwise, so that the hot path pays one lookup. Kept apart so that the worker does
not import OpenTelemetry."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .tracing import _Tracer

active: _Tracer | None = None
