"""``python -m example_app``: the whole demo (server and client) in one process.

Subcommands run each side alone::

    python -m example_app                       # the demo, on a free local port; exits 0
    python -m example_app server --port 8000    # the assistant server
    python -m example_app client --url ws://127.0.0.1:8000/ws/alice --token demo-token

Across processes (BUSPROXY_BUS_URL=redis://...): ``assistant`` runs the assistant alone on the
Redis bus, and ``server --no-assistant`` a gateway without one (see docs/deployment.md).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Sequence

import uvicorn

from fastapi_busproxy import BusProxySettings, WorkerRunner
from fastapi_busproxy.lifespan import create_bus
from fastapi_busproxy.serve import Server
from fastapi_busproxy.serve import run as run_server

from .assistant import Assistant
from .client import QUESTIONS, run_client
from .server import create_app


async def run_assistant() -> None:
    """The assistant in a process of its own, on the bus BUSPROXY_BUS_URL names."""
    settings = BusProxySettings()
    runner = WorkerRunner(name=settings.runner_name, bus=create_bus(settings))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with runner:
        await runner.add_workers(Assistant("assistant"))
        print(f"[assistant] ready on {settings.bus_url}", flush=True)
        await stop.wait()


async def demo() -> int:
    """Serve the assistant on 127.0.0.1 (a free port), then run two clients against it."""
    app = create_app(BusProxySettings(bearer_tokens={"demo-token": "demo"}))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", ws="websockets-sansio", lifespan="on")
    server = Server(config, app)
    serving = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    url = f"ws://127.0.0.1:{port}/ws/demo"
    print(f"[server] assistant served at {url} (bearer token required)")
    try:
        print("[demo] a caller with a wrong token:")
        refused = await run_client(url, token="wrong-token", name="demo")
        print("[demo] a caller with the right token:")
        answers = await run_client(url, token="demo-token", name="demo")
    finally:
        server.should_exit = True
        await serving
        sock.close()
    ok = refused == [] and len(answers) == len(QUESTIONS) and all(answers)
    print(f"[demo] {'done' if ok else 'FAILED'}: {len(answers)} answers received")
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m {__package__}", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command")
    server = commands.add_parser("server", help="serve the assistant")
    server.add_argument("--host", default="127.0.0.1")
    server.add_argument("--port", type=int, default=8000)
    server.add_argument(
        "--no-assistant", action="store_true", help="serve the route only (assistant elsewhere)"
    )
    commands.add_parser("assistant", help="run the assistant alone on the bus of BUSPROXY_BUS_URL")
    client = commands.add_parser("client", help="ask the assistant through a link")
    client.add_argument("--url", required=True, help="ws://host:port/ws/<your name>")
    client.add_argument("--token", default="demo-token")
    client.add_argument("question", nargs="*", help="questions (default: two examples)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    if args.command == "server":
        app = create_app(with_assistant=not args.no_assistant)
        run_server(app, host=args.host, port=args.port)
        return 0
    if args.command == "assistant":
        asyncio.run(run_assistant())
        return 0
    if args.command == "client":
        name = args.url.rstrip("/").rsplit("/", 1)[-1]
        answers = asyncio.run(
            run_client(args.url, token=args.token, name=name, questions=args.question or QUESTIONS)
        )
        return 0 if answers else 1
    return asyncio.run(demo())


if __name__ == "__main__":
    sys.exit(main())
