"""The FastAPI integration behind Starlette's TestClient: routes, auth, lifespan, sessions.

The test plays the remote peer byte for byte in the plain reference format (as in
``test_proxy_testclient.py``): the first message a client receives is the registry message
announcing the server's worker. Every app runs its lifespan (``with TestClient(app)``) unless
the test is about an app that has not started.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import pytest
from fastapi import Depends, FastAPI, HTTPException, WebSocket
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect

from fastapi_busproxy import (
    APIKeyHeaderAuth,
    BaseWorker,
    BearerTokenAuth,
    BusCancelMessage,
    BusCancelWorkerMessage,
    BusEndMessage,
    BusEndWorkerMessage,
    BusMessage,
    BusProxySettings,
    BusSession,
    BusWorkerRegistryMessage,
    CloseCode,
    Identity,
    JSONMessageSerializer,
    RunnerState,
    WebSocketProxyServer,
    WorkerRunner,
    WorkerState,
    bus_proxy_router,
    configure_bus,
    get_runner,
    include_bus_proxy,
    runner_of,
)
from tests.core_support import Echo, Ping, Pong

CODEC = JSONMessageSerializer()
GOOD = {"Authorization": "Bearer tok"}
WAIT = 10  # seconds: a bound on every wait, far above what any of them takes


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come from BUSPROXY_* variables: none of the caller's may leak in."""
    import os

    for variable in list(os.environ):
        if variable.upper().startswith("BUSPROXY_"):
            monkeypatch.delenv(variable)


# -- helpers -----------------------------------------------------------------------------------


def app_with_echo(name: str = "assistant") -> tuple[FastAPI, Echo]:
    """An app whose own lifespan adds an Echo worker through ``runner_of(app)``."""
    echo = Echo(name)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runner_of(app).add_workers(echo)
        yield

    return FastAPI(lifespan=lifespan), echo


def record_added_workers(app: FastAPI) -> list[str]:
    """Names of every worker ever added to the app's runner (even one removed since)."""
    runner = runner_of(app)
    added: list[str] = []
    add_workers = runner.add_workers

    async def recording(*workers: BaseWorker, **options: Any) -> None:
        added.extend(worker.name for worker in workers)
        await add_workers(*workers, **options)

    runner.add_workers = recording  # type: ignore[method-assign]
    return added


def send(ws: Any, message: BusMessage) -> None:
    ws.send_bytes(CODEC.serialize(message))


def receive(ws: Any) -> BusMessage:
    return CODEC.deserialize(ws.receive_bytes())


def expect_registry(ws: Any, worker: str = "assistant") -> None:
    message = receive(ws)
    assert isinstance(message, BusWorkerRegistryMessage)
    assert [entry.name for entry in message.workers] == [worker]


def ping_pong(ws: Any, me: str, text: str, worker: str = "assistant") -> None:
    send(ws, Ping(source=me, target=worker, text=text))
    pong = receive(ws)
    assert isinstance(pong, Pong)
    assert (pong.source, pong.target, pong.text) == (worker, me, text.upper())


def close_code(ws: Any) -> int:
    """The close code of the next message, which must be a close."""
    with pytest.raises(WebSocketDisconnect) as info:
        ws.receive_bytes()
    return info.value.code


def refusal(client: TestClient, path: str, headers: dict[str, str] | None = None) -> Any:
    """The exception the handshake of ``path`` ends with (it must not be accepted)."""
    with pytest.raises(WebSocketDisconnect) as info:
        with client.websocket_connect(path, headers=dict(headers or {})):
            pass
    return info.value


@contextmanager
def answering_close(ws: Any) -> Iterator[list[int]]:
    """Read ``ws``'s close in a thread and answer it, as every real WebSocket client does.

    The server waits for that answer before it serves a connection that replaces ``ws``; a
    TestClient peer only answers when told to, and the test's thread is busy connecting.
    """
    codes: list[int] = []
    failures: list[BaseException] = []

    def answer() -> None:
        try:
            codes.append(close_code(ws))
            ws.close(codes[-1])
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=answer, name="answering-close")
    thread.start()
    try:
        yield codes
    finally:
        thread.join(WAIT)
    assert not thread.is_alive()
    assert failures == []


def leave(client: TestClient, ws: Any, *session_workers: BaseWorker) -> None:
    """Disconnect as a remote peer does and wait until the session's workers have finished.

    Leaving a ``websocket_connect`` block instead also cancels the endpoint, which may
    interrupt the session's clean-up (see
    ``test_session_workers_are_removed_when_the_endpoint_is_cancelled``).
    """
    ws.close(CloseCode.NORMAL_CLOSURE)
    for worker in session_workers:
        wait_for(client, worker)


def wait_for(client: TestClient, worker: BaseWorker) -> None:
    """Wait, in the app's event loop, until ``worker`` has finished (bounded)."""

    async def finished() -> None:
        with anyio.fail_after(WAIT):
            await worker.wait()

    client.portal.call(finished)  # type: ignore[union-attr]


# -- 1. authentication before accept -----------------------------------------------------------


def secured_app(dependency: Any) -> tuple[FastAPI, Echo, list[str]]:
    app, echo = app_with_echo()
    app.include_router(
        bus_proxy_router(
            "/ws",
            worker_name="assistant",
            remote_worker_name="voice",
            dependencies=[Depends(dependency)],
        )
    )
    return app, echo, record_added_workers(app)


def test_bearer_token_accepted() -> None:
    app, echo, added = secured_app(BearerTokenAuth({"tok": "alice"}))
    with TestClient(app) as client, client.websocket_connect("/ws", headers=GOOD) as ws:
        expect_registry(ws)
        ping_pong(ws, "voice", "hello")
        assert added == ["assistant", "gateway:voice"]
    assert [m.text for m in echo.received] == ["hello"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic tok"},
        {"Authorization": "Bearer"},
    ],
    ids=["no token", "wrong token", "other scheme", "empty token"],
)
def test_bearer_token_refused_before_accept(headers: dict[str, str]) -> None:
    app, echo, added = secured_app(BearerTokenAuth({"tok": "alice"}))
    with TestClient(app) as client:
        # A close before accept (which a real ASGI server answers with HTTP 403).
        refused = refusal(client, "/ws", headers)
        assert not isinstance(refused, WebSocketDenialResponse)
        assert refused.code == CloseCode.POLICY_VIOLATION
        runner = runner_of(app)
        assert added == ["assistant"]
        assert [worker.name for worker in runner.workers] == ["assistant"]
        assert "voice" not in runner.registry
    assert echo.received == []


def test_api_key_header_accepted_and_refused() -> None:
    app, _, added = secured_app(APIKeyHeaderAuth({"k-123": "svc"}, header="X-API-Key"))
    with TestClient(app) as client:
        for headers in ({}, {"X-API-Key": "nope"}, {"Authorization": "Bearer k-123"}):
            refused = refusal(client, "/ws", headers)
            assert refused.code == CloseCode.POLICY_VIOLATION
        assert added == ["assistant"]
        with client.websocket_connect("/ws", headers={"X-API-Key": "k-123"}) as ws:
            expect_registry(ws)
            ping_pong(ws, "voice", "key")
        assert added == ["assistant", "gateway:voice"]


def test_api_key_header_defaults_to_x_api_key() -> None:
    app, _, _ = secured_app(APIKeyHeaderAuth({"k-123": "svc"}))
    with TestClient(app) as client:
        with client.websocket_connect("/ws", headers={"x-api-key": "k-123"}) as ws:
            expect_registry(ws)


def test_user_dependency_http_exception_is_a_denial_response() -> None:
    async def only_admins(websocket: WebSocket) -> None:
        raise HTTPException(status_code=401, detail="who are you?")

    app, echo, added = secured_app(only_admins)
    with TestClient(app) as client:
        refused = refusal(client, "/ws")
        assert isinstance(refused, WebSocketDenialResponse)
        assert refused.status_code == 401
        assert added == ["assistant"]
    assert echo.received == []


def test_security_dependencies_refuse_http_requests_with_403() -> None:
    app = FastAPI()
    bearer = BearerTokenAuth({"tok": "alice"})

    @app.get("/me")
    async def me(who: Identity = Depends(bearer)) -> dict[str, str]:
        return {"name": who.name, "scheme": who.scheme}

    with TestClient(app) as client:
        assert client.get("/me").status_code == 403
        assert client.get("/me", headers={"Authorization": "Bearer bad"}).status_code == 403
        answer = client.get("/me", headers=GOOD)
        assert answer.status_code == 200
        assert answer.json() == {"name": "alice", "scheme": "bearer"}


# -- 2. identity names the session -------------------------------------------------------------


def test_identity_names_the_remote_worker() -> None:
    app, echo = app_with_echo()
    sessions: list[BusSession] = []

    def caller(session: BusSession) -> str:
        sessions.append(session)
        return f"caller-{session.identity.name}"

    include_bus_proxy(
        app,
        "/ws",
        "assistant",
        remote_worker_name=caller,
        identity=BearerTokenAuth({"tok": "alice", "tok2": "bob"}),
    )
    with TestClient(app) as client:
        refused = refusal(client, "/ws", {"Authorization": "Bearer nope"})
        assert refused.code == CloseCode.POLICY_VIOLATION
        assert sessions == []  # the identity dependency refused before any naming
        with client.websocket_connect("/ws", headers=GOOD) as ws:
            expect_registry(ws)
            ping_pong(ws, "caller-alice", "hi")
            proxy = runner_of(app).get_worker("gateway:caller-alice")
            assert isinstance(proxy, WebSocketProxyServer)
            assert proxy.remote_worker_name == "caller-alice"
            assert proxy.worker_name == "assistant"
    assert sessions[0].identity == Identity(name="alice", scheme="bearer")
    assert sessions[0].remote_worker_name == "caller-alice"
    assert [(m.source, m.origin) for m in echo.received] == [
        ("caller-alice", "gateway:caller-alice")
    ]


def test_messages_from_another_identity_name_are_refused() -> None:
    app, echo = app_with_echo()
    include_bus_proxy(
        app,
        "/ws",
        "assistant",
        remote_worker_name=lambda s: f"caller-{s.identity.name}",
        identity=BearerTokenAuth({"tok": "alice", "tok2": "bob"}),
    )
    with TestClient(app) as client, client.websocket_connect("/ws", headers=GOOD) as ws:
        expect_registry(ws)
        send(ws, Ping(source="caller-bob", target="assistant", text="forged"))
        ping_pong(ws, "caller-alice", "real")
        proxy = runner_of(app).get_worker("gateway:caller-alice")
        assert isinstance(proxy, WebSocketProxyServer)
        assert proxy.stats.rejected_by_reason == {"forged_source": 1}
    assert [m.text for m in echo.received] == ["real"]  # type: ignore[attr-defined]


# -- 3. lifespan -------------------------------------------------------------------------------


def test_runner_runs_for_the_app_lifetime_with_the_apps_own_lifespan() -> None:
    app, echo = app_with_echo()
    include_bus_proxy(app, "/ws", "assistant", remote_worker_name="voice")
    with TestClient(app) as client:
        runner = runner_of(app)
        assert runner.state is RunnerState.RUNNING
        assert echo.state is WorkerState.RUNNING
        assert "assistant" in runner.registry
        with client.websocket_connect("/ws") as ws:
            expect_registry(ws)
            ping_pong(ws, "voice", "up")
    assert runner.state is RunnerState.FINISHED
    assert echo.state is WorkerState.FINISHED


def test_app_without_a_lifespan_of_its_own() -> None:
    app = FastAPI()
    include_bus_proxy(app, "/ws", "assistant", remote_worker_name="voice")
    runner = runner_of(app)  # before the app starts: created, not running
    assert runner.state is RunnerState.CREATED
    with TestClient(app) as client:
        assert runner_of(app) is runner
        assert runner.state is RunnerState.RUNNING
        client.portal.call(runner.add_workers, Echo("assistant"))  # type: ignore[union-attr]
        with client.websocket_connect("/ws") as ws:
            expect_registry(ws)
            ping_pong(ws, "voice", "plain")
    assert runner.state is RunnerState.FINISHED


def test_app_can_be_started_again_with_a_new_runner() -> None:
    app = FastAPI()
    include_bus_proxy(app, "/ws", "assistant", remote_worker_name="voice")
    with TestClient(app):
        first = runner_of(app)
    with TestClient(app) as client:
        second = runner_of(app)
        assert second is not first
        assert second.state is RunnerState.RUNNING
        client.portal.call(second.add_workers, Echo("assistant"))  # type: ignore[union-attr]
        with client.websocket_connect("/ws") as ws:
            expect_registry(ws)
            ping_pong(ws, "voice", "again")
    assert first.state is second.state is RunnerState.FINISHED


def test_two_routes_share_one_runner() -> None:
    app, _ = app_with_echo()
    app.include_router(
        bus_proxy_router("/voice", worker_name="assistant", remote_worker_name="voice")
    )
    app.include_router(
        bus_proxy_router(
            "/phone", worker_name="assistant", remote_worker_name="phone", name="phones"
        )
    )
    seen: list[WorkerRunner] = []

    @app.get("/runner")
    async def which(runner: WorkerRunner = Depends(get_runner)) -> dict[str, str]:
        seen.append(runner)
        return {"name": runner.name}

    with TestClient(app) as client:
        runner = runner_of(app)
        assert runner.state is RunnerState.RUNNING
        assert client.get("/runner").json() == {"name": runner.name}
        assert seen == [runner]
        assert seen[0] is runner
        with client.websocket_connect("/voice") as voice:
            with client.websocket_connect("/phone") as phone:
                expect_registry(voice)
                expect_registry(phone)
                ping_pong(voice, "voice", "one")
                ping_pong(phone, "phone", "two")
                names = {worker.name for worker in runner.workers}
                assert {"gateway:voice", "phones:phone"} <= names
    assert runner.state is RunnerState.FINISHED


def test_open_link_is_closed_with_1001_on_shutdown() -> None:
    # The app's own lifespan wraps the bus's: after yield, the links are already closed and
    # the runner ended. Holding the loop there lets the test read the close from the
    # client side before the TestClient's event loop goes away.
    read = threading.Event()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runner_of(app).add_workers(Echo("assistant"))
        yield
        await anyio.to_thread.run_sync(read.wait, WAIT)

    app = FastAPI(lifespan=lifespan)
    include_bus_proxy(app, "/ws", "assistant", remote_worker_name="voice")
    client = TestClient(app).__enter__()
    runner = runner_of(app)
    ws = client.websocket_connect("/ws").__enter__()
    expect_registry(ws)
    ping_pong(ws, "voice", "before shutdown")
    proxy = runner.get_worker("gateway:voice")
    assert isinstance(proxy, WebSocketProxyServer)
    codes: list[int] = []

    def client_side() -> None:
        try:
            codes.append(close_code(ws))
        finally:
            ws.__exit__(None, None, None)
            read.set()

    reader = threading.Thread(target=client_side)
    reader.start()
    try:
        client.__exit__(None, None, None)
    finally:
        read.set()
        reader.join(WAIT)
    assert codes == [CloseCode.GOING_AWAY]
    assert proxy.close_info is not None
    assert (proxy.close_info.code, proxy.close_info.by_us) == (CloseCode.GOING_AWAY, True)
    assert runner.state is RunnerState.FINISHED


# -- 4. concurrent sessions --------------------------------------------------------------------


def caller_from_path(session: BusSession) -> str:
    return str(session.path_params["caller"])


def test_two_callers_get_only_their_own_answers() -> None:
    app, echo = app_with_echo()
    include_bus_proxy(app, "/ws/{caller}", "assistant", remote_worker_name=caller_from_path)
    with TestClient(app) as client:
        with client.websocket_connect("/ws/a") as a, client.websocket_connect("/ws/b") as b:
            expect_registry(a)
            expect_registry(b)
            # The answer to b is sent first: had it leaked to a, a would read it first.
            ping_pong(b, "b", "for b")
            ping_pong(a, "a", "for a")
            ping_pong(a, "a", "a again")
            ping_pong(b, "b", "b again")
            runner = runner_of(app)
            assert {"gateway:a", "gateway:b"} <= {worker.name for worker in runner.workers}
    assert [(m.source, m.origin) for m in echo.received] == [
        ("b", "gateway:b"),
        ("a", "gateway:a"),
        ("a", "gateway:a"),
        ("b", "gateway:b"),
    ]


def test_a_caller_cannot_speak_as_another() -> None:
    app, echo = app_with_echo()
    include_bus_proxy(app, "/ws/{caller}", "assistant", remote_worker_name=caller_from_path)
    with TestClient(app) as client:
        with client.websocket_connect("/ws/a") as a, client.websocket_connect("/ws/b") as b:
            expect_registry(a)
            expect_registry(b)
            send(a, Ping(source="b", target="assistant", text="as b"))
            ping_pong(a, "a", "as a")
            ping_pong(b, "b", "b sees only its own")
    assert [m.text for m in echo.received] == ["as a", "b sees only its own"]  # type: ignore[attr-defined]


# -- 5. duplicate names ------------------------------------------------------------------------


def test_duplicate_is_refused_by_default() -> None:
    app, _ = app_with_echo()
    include_bus_proxy(app, "/ws/{caller}", "assistant", remote_worker_name=caller_from_path)
    with TestClient(app) as client, client.websocket_connect("/ws/a") as first:
        expect_registry(first)
        runner = runner_of(app)
        added = record_added_workers(app)
        with client.websocket_connect("/ws/a") as second:  # accepted, then closed
            assert close_code(second) == CloseCode.DUPLICATE_SESSION
        assert added == []
        ping_pong(first, "a", "still mine")
        assert [w.name for w in runner.workers].count("gateway:a") == 1


def test_duplicate_replaces_the_first() -> None:
    app, echo = app_with_echo()
    include_bus_proxy(
        app,
        "/ws/{caller}",
        "assistant",
        remote_worker_name=caller_from_path,
        duplicate_policy="replace",
    )
    with TestClient(app) as client, client.websocket_connect("/ws/a") as first:
        expect_registry(first)
        ping_pong(first, "a", "first")
        old = runner_of(app).get_worker("gateway:a")
        with answering_close(first) as codes, client.websocket_connect("/ws/a") as second:
            assert codes == [CloseCode.SESSION_REPLACED]
            expect_registry(second)
            ping_pong(second, "a", "second")
            new = runner_of(app).get_worker("gateway:a")
            assert new is not None
            assert new is not old
            assert old is not None
            assert old.finished
    assert [m.text for m in echo.received] == ["first", "second"]  # type: ignore[attr-defined]


def test_duplicate_policy_comes_from_the_settings() -> None:
    app, _ = app_with_echo()
    configure_bus(app, settings=BusProxySettings(duplicate_policy="replace"))
    include_bus_proxy(app, "/ws/{caller}", "assistant", remote_worker_name=caller_from_path)
    with TestClient(app) as client, client.websocket_connect("/ws/a") as first:
        expect_registry(first)
        with answering_close(first) as codes, client.websocket_connect("/ws/a") as second:
            assert codes == [CloseCode.SESSION_REPLACED]
            expect_registry(second)
            ping_pong(second, "a", "replaced")


def test_replace_renews_the_session_workers() -> None:
    app, _ = app_with_echo()
    made: list[Echo] = []

    def assistants(session: BusSession) -> list[BaseWorker]:
        made.append(Echo(f"assistant-{session.path_params['caller']}"))
        return [made[-1]]

    include_bus_proxy(
        app,
        "/ws/{caller}",
        "assistant",
        remote_worker_name=caller_from_path,
        session_workers=assistants,
        duplicate_policy="replace",
    )
    with TestClient(app) as client, client.websocket_connect("/ws/a") as first:
        expect_registry(first)
        with answering_close(first) as codes, client.websocket_connect("/ws/a") as second:
            assert codes == [CloseCode.SESSION_REPLACED]
            expect_registry(second)
            ping_pong(second, "a", "fresh")
            assert len(made) == 2
            assert made[0].finished
            assert runner_of(app).get_worker("assistant-a") is made[1]
            leave(client, second, made[1])


# -- 6. per-session workers --------------------------------------------------------------------


def session_app(kind: type[Echo] = Echo) -> tuple[FastAPI, list[Echo]]:
    made: list[Echo] = []

    def assistant_for(session: BusSession) -> str:
        return f"assistant-{session.path_params['caller']}"

    def assistants(session: BusSession) -> list[BaseWorker]:
        made.append(kind(session.worker_name))
        return [made[-1]]

    app = FastAPI()
    include_bus_proxy(
        app,
        "/ws/{caller}",
        assistant_for,
        remote_worker_name=caller_from_path,
        session_workers=assistants,
    )
    return app, made


def test_session_workers_live_and_die_with_the_connection() -> None:
    app, made = session_app()
    with TestClient(app) as client:
        runner = runner_of(app)
        with client.websocket_connect("/ws/ann") as ws:
            expect_registry(ws, "assistant-ann")
            ping_pong(ws, "ann", "mine", worker="assistant-ann")
            proxy = runner.get_worker("gateway:ann")
            assert proxy is not None
            assert runner.get_worker("assistant-ann") is made[0]
            assert "assistant-ann" in runner.registry
            leave(client, ws, proxy, made[0])
        assert runner.get_worker("gateway:ann") is None
        assert runner.get_worker("assistant-ann") is None
        assert "assistant-ann" not in runner.registry
        # The name is free again: the same caller comes back with a new assistant.
        with client.websocket_connect("/ws/ann") as ws:
            expect_registry(ws, "assistant-ann")
            ping_pong(ws, "ann", "back", worker="assistant-ann")
            assert runner.get_worker("assistant-ann") is made[1]
            leave(client, ws, made[1])
        assert runner.get_worker("assistant-ann") is None


def test_async_session_workers_and_async_names() -> None:
    made: list[Echo] = []

    async def assistant_for(session: BusSession) -> str:
        return f"assistant-{session.path_params['caller']}"

    async def assistants(session: BusSession) -> list[BaseWorker]:
        made.append(Echo(session.worker_name))
        return [made[-1]]

    app = FastAPI()
    include_bus_proxy(
        app,
        "/ws/{caller}",
        assistant_for,
        remote_worker_name=caller_from_path,
        session_workers=assistants,
    )
    with TestClient(app) as client, client.websocket_connect("/ws/zed") as ws:
        expect_registry(ws, "assistant-zed")
        ping_pong(ws, "zed", "async", worker="assistant-zed")
        assert [worker.name for worker in made] == ["assistant-zed"]
        leave(client, ws, made[0])
    assert made[0].finished


class SlowToStop(Echo):
    """An assistant whose clean-up takes a moment (a flush, a goodbye to a backend)."""

    async def stop(self) -> None:
        await asyncio.sleep(0.2)  # the work itself, not a wait for something
        await super().stop()


def test_session_workers_are_removed_when_the_endpoint_is_cancelled() -> None:
    app, made = session_app(SlowToStop)
    with TestClient(app) as client:
        runner = runner_of(app)
        # Leaving the block sends a disconnect and cancels the endpoint.
        with client.websocket_connect("/ws/ann") as ws:
            expect_registry(ws, "assistant-ann")
            ping_pong(ws, "ann", "hi", worker="assistant-ann")
        wait_for(client, made[0])
        assert runner.get_worker("assistant-ann") is None
        # The caller comes back: its name must be free again.
        with client.websocket_connect("/ws/ann") as again:
            first = again.receive()
            assert first["type"] == "websocket.send", first  # a 4001 close while the bug is here
            leave(client, again, made[1])


# -- 7. runner not running ---------------------------------------------------------------------


def test_connection_refused_when_the_runner_is_not_running() -> None:
    app = FastAPI()
    include_bus_proxy(app, "/ws", "assistant", remote_worker_name="voice")
    added = record_added_workers(app)
    client = TestClient(app)  # no `with`: the lifespan never runs
    try:
        refused = refusal(client, "/ws")
        assert isinstance(refused, WebSocketDenialResponse)
        assert refused.status_code == 503
    finally:
        client.close()
    assert added == []
    assert runner_of(app).state is RunnerState.CREATED


def test_connection_refused_after_shutdown() -> None:
    app, _ = app_with_echo()
    include_bus_proxy(app, "/ws", "assistant", remote_worker_name="voice")
    with TestClient(app) as client:
        with client.websocket_connect("/ws") as ws:
            expect_registry(ws)
    refused = refusal(client, "/ws")
    assert isinstance(refused, WebSocketDenialResponse)
    assert refused.status_code == 503
    client.close()


# -- 8. settings -------------------------------------------------------------------------------


def test_settings_read_busproxy_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUSPROXY_MAX_MESSAGE_SIZE", "4096")
    monkeypatch.setenv("BUSPROXY_DUPLICATE_POLICY", "replace")
    monkeypatch.setenv("BUSPROXY_PING_INTERVAL", "5.5")
    monkeypatch.setenv("BUSPROXY_BEARER_TOKENS", '{"t": "n"}')
    monkeypatch.setenv("BUSPROXY_API_KEYS", '{"k": "svc"}')
    settings = BusProxySettings()
    assert settings.max_message_size == 4096
    assert settings.duplicate_policy == "replace"
    assert settings.ping_interval == 5.5
    assert settings.bearer_tokens == {"t": "n"}
    assert settings.api_keys == {"k": "svc"}
    assert settings.server_proxy_options()["max_message_size"] == 4096


def test_bearer_tokens_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUSPROXY_BEARER_TOKENS", '{"t": "n"}')
    app, _ = app_with_echo()
    include_bus_proxy(
        app,
        "/ws",
        "assistant",
        remote_worker_name=lambda s: s.identity.name,
        identity=BearerTokenAuth(),
    )
    with TestClient(app) as client:
        refused = refusal(client, "/ws", GOOD)
        assert refused.code == CloseCode.POLICY_VIOLATION
        with client.websocket_connect("/ws", headers={"Authorization": "Bearer t"}) as ws:
            expect_registry(ws)
            ping_pong(ws, "n", "from the environment")


# A limit the registry announcement (about 300 bytes) fits in, and a message that does not.
LIMIT = 2000
BIG = "x" * 2 * LIMIT


def test_environment_settings_reach_the_routes_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUSPROXY_MAX_MESSAGE_SIZE", str(LIMIT))
    app, echo = app_with_echo()
    include_bus_proxy(app, "/ws", "assistant", remote_worker_name="voice")
    with TestClient(app) as client, client.websocket_connect("/ws") as ws:
        expect_registry(ws)
        send(ws, Ping(source="voice", target="assistant", text=BIG))
        assert close_code(ws) == CloseCode.MESSAGE_TOO_BIG
    assert echo.received == []


def oversized_app(settings: BusProxySettings | None, **route_options: Any) -> tuple[FastAPI, Echo]:
    app, echo = app_with_echo()
    if settings is not None:
        configure_bus(app, settings=settings)
    include_bus_proxy(app, "/ws", "assistant", remote_worker_name="voice", **route_options)
    return app, echo


def test_configured_settings_reach_the_routes_proxies() -> None:
    app, echo = oversized_app(BusProxySettings(max_message_size=LIMIT))
    with TestClient(app) as client, client.websocket_connect("/ws") as ws:
        expect_registry(ws)
        ping_pong(ws, "voice", "small")
        proxy = runner_of(app).get_worker("gateway:voice")
        assert isinstance(proxy, WebSocketProxyServer)
        send(ws, Ping(source="voice", target="assistant", text=BIG))
        assert close_code(ws) == CloseCode.MESSAGE_TOO_BIG
    assert [m.text for m in echo.received] == ["small"]  # type: ignore[attr-defined]
    assert proxy.stats.oversized == 1


@pytest.mark.parametrize(
    ("settings", "route_options"),
    [
        (None, {}),
        (BusProxySettings(max_message_size=LIMIT), {"max_message_size": 10 * LIMIT}),
    ],
    ids=["default settings", "route option over settings"],
)
def test_big_message_passes_under_a_larger_limit(
    settings: BusProxySettings | None, route_options: dict[str, Any]
) -> None:
    app, echo = oversized_app(settings, **route_options)
    with TestClient(app) as client, client.websocket_connect("/ws") as ws:
        expect_registry(ws)
        ping_pong(ws, "voice", BIG)
    assert len(echo.received) == 1


def test_configure_bus_refuses_a_running_app() -> None:
    from fastapi_busproxy import ConfigurationError

    app = FastAPI()
    include_bus_proxy(app, "/ws", "assistant", remote_worker_name="voice")
    with TestClient(app):
        with pytest.raises(ConfigurationError, match="already running"):
            configure_bus(app, settings=BusProxySettings())


def test_a_limit_too_small_for_the_protocol_is_refused() -> None:
    from fastapi_busproxy import ConfigurationError

    with pytest.raises(ConfigurationError, match="at least 1024"):
        WebSocketProxyServer(
            "gateway",
            websocket=object(),
            worker_name="a",
            remote_worker_name="b",
            max_message_size=100,
        )


# -- 9. ending a session -----------------------------------------------------------------------

PEER_ENDS = {
    "end": BusEndMessage(source="a", reason="bye"),
    "end to its worker": BusEndMessage(source="a", target="assistant"),
    "end the shared worker": BusEndWorkerMessage(source="a", target="assistant"),
    "cancel": BusCancelMessage(source="a"),
    "cancel the shared worker": BusCancelWorkerMessage(source="a", target="assistant"),
}


@pytest.mark.parametrize("kind", list(PEER_ENDS))
def test_a_peer_ends_only_its_own_connection(kind: str) -> None:
    """A peer's end or cancel ends its own session: never the shared worker, nor the app."""
    app, echo = app_with_echo()
    include_bus_proxy(app, "/ws/{caller}", "assistant", remote_worker_name=caller_from_path)
    with TestClient(app) as client:
        runner = runner_of(app)
        with client.websocket_connect("/ws/a") as a, client.websocket_connect("/ws/b") as b:
            expect_registry(a)
            expect_registry(b)
            proxy = runner.get_worker("gateway:a")
            assert proxy is not None
            send(a, PEER_ENDS[kind])
            assert close_code(a) == CloseCode.GOING_AWAY
            wait_for(client, proxy)
            assert runner.get_worker("gateway:a") is None
            # The shared worker still answers the other connection.
            ping_pong(b, "b", "still here")
            assert echo.state is WorkerState.RUNNING
            assert "assistant" in runner.registry
            assert runner.state is RunnerState.RUNNING
            assert proxy.stats.rejected == 0
    assert [m.text for m in echo.received] == ["still here"]  # type: ignore[attr-defined]


class HangingUp(Echo):
    """An assistant that ends its session when its caller says "bye"."""

    async def on_bus_message(self, message: BusMessage) -> None:
        if isinstance(message, Ping) and message.text == "bye":
            await self.end(reason="the caller said bye")
        else:
            await super().on_bus_message(message)


def test_a_session_worker_ends_its_own_session_only() -> None:
    app, made = session_app(HangingUp)
    with TestClient(app) as client:
        runner = runner_of(app)
        with client.websocket_connect("/ws/ann") as ann, client.websocket_connect("/ws/bob") as bob:
            expect_registry(ann, "assistant-ann")
            expect_registry(bob, "assistant-bob")
            proxy = runner.get_worker("gateway:ann")
            assert proxy is not None
            send(ann, Ping(source="ann", target="assistant-ann", text="bye"))
            assert close_code(ann) == CloseCode.GOING_AWAY
            wait_for(client, made[0])
            wait_for(client, proxy)
            assert runner.get_worker("assistant-ann") is None
            ping_pong(bob, "bob", "still here", worker="assistant-bob")
            assert runner.state is RunnerState.RUNNING
            leave(client, bob, made[1])
