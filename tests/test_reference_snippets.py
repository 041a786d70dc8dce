"""The code of the reference documentation page, with our import paths, runs unchanged.

Each snippet is executed as written in a namespace that provides what the page assumes
(``runner``, ``app``, ``logger``); the test then checks that the objects behave as documented.
"""

from __future__ import annotations

import logging
import textwrap
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fastapi import FastAPI, WebSocket
from starlette.testclient import TestClient

from fastapi_busproxy import BaseWorker, JSONMessageSerializer, WorkerRunner
from tests.servers import running_uvicorn

CLIENT_SNIPPET = textwrap.dedent(
    """
    from fastapi_busproxy.proxy.client import WebSocketProxyClient
    proxy = WebSocketProxyClient(
        "proxy",
        url="ws://remote-server:8765/ws",
        remote_worker_name="worker",
        local_worker_name="voice",
    )

    @proxy.event_handler("on_connected")
    async def on_connected(worker, websocket):
        logger.info("Connected to remote server")

    @proxy.event_handler("on_disconnected")
    async def on_disconnected(worker, websocket):
        logger.info("Disconnected from remote server")

    await runner.add_workers(proxy)
    """
)

SERVER_SNIPPET = textwrap.dedent(
    """
    from fastapi_busproxy.proxy.server import WebSocketProxyServer
    @app.websocket("/ws")
    async def websocket_endpoint(websocket: WebSocket):
        await websocket.accept()
        proxy = WebSocketProxyServer(
            "gateway",
            websocket=websocket,
            worker_name="worker",
            remote_worker_name="voice",
        )

        @proxy.event_handler("on_client_connected")
        async def on_client_connected(worker, websocket):
            logger.info("Client connected")

        @proxy.event_handler("on_client_disconnected")
        async def on_client_disconnected(worker, websocket):
            logger.info("Client disconnected")

        await runner.add_workers(proxy)
    """
)

logger = logging.getLogger("snippets")


async def run_snippet(source: str, namespace: dict[str, Any]) -> None:
    """Run ``source`` as the body of a coroutine (the page uses top-level await)."""
    body = textwrap.indent(source, "    ")
    exec(
        compile(f"async def __snippet__():\n{body}\n    return locals()", "<snippet>", "exec"),
        namespace,
    )
    namespace.update(await namespace["__snippet__"]())


@pytest.mark.anyio
async def test_client_snippet_builds_a_working_proxy(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="snippets")
    server_runner = WorkerRunner(name="server-runner")

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        async with server_runner:
            await server_runner.add_workers(BaseWorker("worker"))
            yield

    server_app = FastAPI(lifespan=lifespan)

    @server_app.websocket("/ws")
    async def endpoint(websocket: WebSocket) -> None:
        from fastapi_busproxy import WebSocketProxyServer

        proxy = WebSocketProxyServer(
            "gateway", websocket=websocket, worker_name="worker", remote_worker_name="voice"
        )
        await server_runner.add_workers(proxy)
        await proxy.wait()

    runner = WorkerRunner(name="client-runner")
    async with runner, running_uvicorn(server_app) as server:
        voice = BaseWorker("voice")
        await runner.add_workers(voice)
        namespace: dict[str, Any] = {"runner": runner, "logger": logger}
        await run_snippet(CLIENT_SNIPPET, namespace)
        proxy = namespace["proxy"]
        assert runner.get_worker("proxy") is proxy
        assert not proxy.active
        assert not proxy.connected
        proxy.url = server.url("/ws")  # the page's host does not exist here
        await voice.activate_worker("proxy")
        entry = await runner.registry.wait_ready("worker", timeout=10)
        assert entry.name == "worker"
        assert "Connected to remote server" in caplog.messages
        await runner.end()
    assert "Disconnected from remote server" in caplog.messages


def test_server_snippet_serves_a_reference_style_endpoint(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="snippets")
    runner = WorkerRunner(name="server-runner")

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        async with runner:
            await runner.add_workers(BaseWorker("worker"))
            yield

    app = FastAPI(lifespan=lifespan)
    namespace: dict[str, Any] = {
        "app": app,
        "runner": runner,
        "logger": logger,
        "WebSocket": WebSocket,
    }
    with TestClient(app) as client:
        client.portal.call(run_snippet, SERVER_SNIPPET, namespace)  # type: ignore[union-attr]
        with client.websocket_connect("/ws") as ws:
            # The reference handshake: the server tells the client its worker is ready.
            registry = JSONMessageSerializer().deserialize(ws.receive_bytes())
            assert type(registry).__name__ == "BusWorkerRegistryMessage"
            assert [e.name for e in registry.workers] == ["worker"]  # type: ignore[attr-defined]
            assert registry.source == "gateway"
    assert "Client connected" in caplog.messages
