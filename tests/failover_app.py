"""An instance for the failover test: ``uvicorn --factory tests.failover_app:create_app``.

A gateway on the app's bus (its settings from ``BUSPROXY_*``: a durable Redis bus in the
test): a client named ``streamer`` reaches the worker ``sink``, hosted in another process.
"""

from __future__ import annotations

from fastapi import FastAPI

import tests.redis_messages  # noqa: F401 (the Ping type, so that it decodes)
from fastapi_busproxy import include_bus_proxy


def create_app() -> FastAPI:
    app = FastAPI()
    include_bus_proxy(app, "/ws", "sink", remote_worker_name="streamer")
    return app
