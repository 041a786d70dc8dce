"""Run a compat program on pipecat-ai itself: the reference side of the differential suite.

Run with the side venv's python (the one with pipecat-ai installed, never ours)::

    .pipecat-venv/bin/python tests/compat/reference_shim.py tests/compat/programs/<x>.py

It installs into ``sys.modules`` a module named ``fastapi_busproxy`` whose attributes are
pipecat's own classes and functions under the names our package exports, imports the program by
path, runs its ``main()`` and prints the outcome as one JSON line on stdout. Everything else
(pipecat's loguru output, anything the program prints) is kept off stdout; set
``BUSPROXY_SHIM_LOG=DEBUG`` to see pipecat's log on stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import sys
import types

os.environ.pop("PIPECAT_SETUP_FILES", None)  # no setup hooks from the environment

# pipecat logs with loguru: silence it before importing pipecat.
from loguru import logger

logger.remove()

import pipecat.bus as pc_bus  # noqa: E402
from pipecat.bus.serializers import JSONMessageSerializer, MessageSerializer  # noqa: E402
from pipecat.pipeline.job_context import (  # noqa: E402
    JobContext,
    JobError,
    JobEvent,
    JobGroup,
    JobGroupContext,
    JobGroupError,
    JobGroupEvent,
    JobGroupParams,
    JobGroupResponse,
    JobParams,
    JobStatus,
)
from pipecat.pipeline.job_decorator import job  # noqa: E402
from pipecat.pipeline.worker_ready_decorator import worker_ready  # noqa: E402
from pipecat.registry import WorkerRegistry  # noqa: E402
from pipecat.registry.types import (  # noqa: E402
    WorkerErrorData,
    WorkerReadyData,
    WorkerRegistryEntry,
)
from pipecat.workers.base_worker import BaseWorker, WorkerActivationArgs  # noqa: E402
from pipecat.workers.proxy import WebSocketProxyClient, WebSocketProxyServer  # noqa: E402
from pipecat.workers.runner import WorkerRunner  # noqa: E402

logger.remove()  # in case an import added a sink
if os.environ.get("BUSPROXY_SHIM_LOG"):  # e.g. BUSPROXY_SHIM_LOG=DEBUG, to see pipecat's log
    logger.add(sys.stderr, level=os.environ["BUSPROXY_SHIM_LOG"])

EXPORTS: dict[str, object] = {
    "BaseWorker": BaseWorker,
    "WorkerRunner": WorkerRunner,
    "WorkerRegistry": WorkerRegistry,
    "WorkerReadyData": WorkerReadyData,
    "WorkerErrorData": WorkerErrorData,
    "WorkerRegistryEntry": WorkerRegistryEntry,
    "WorkerActivationArgs": WorkerActivationArgs,
    "JobParams": JobParams,
    "JobGroupParams": JobGroupParams,
    "JobStatus": JobStatus,
    "JobError": JobError,
    "JobGroupError": JobGroupError,
    "JobEvent": JobEvent,
    "JobGroupEvent": JobGroupEvent,
    "JobGroupResponse": JobGroupResponse,
    "JobContext": JobContext,
    "JobGroupContext": JobGroupContext,
    "JobGroup": JobGroup,
    "job": job,
    "worker_ready": worker_ready,
    "AsyncQueueBus": pc_bus.AsyncQueueBus,
    "WorkerBus": pc_bus.WorkerBus,
    "MessageSerializer": MessageSerializer,
    "JSONMessageSerializer": JSONMessageSerializer,
    "WebSocketProxyClient": WebSocketProxyClient,
    "WebSocketProxyServer": WebSocketProxyServer,
}
# Every Bus*Message class pipecat's bus package exports.
EXPORTS.update(
    {
        name: getattr(pc_bus, name)
        for name in pc_bus.__all__
        if name.startswith("Bus") and name.endswith("Message")
    }
)


def install() -> types.ModuleType:
    """Put the stand-in ``fastapi_busproxy`` module into ``sys.modules`` and return it."""
    module = types.ModuleType("fastapi_busproxy", "pipecat-ai's worker API under our names")
    for name, value in EXPORTS.items():
        setattr(module, name, value)
    module.__all__ = sorted(EXPORTS)  # type: ignore[attr-defined]
    sys.modules["fastapi_busproxy"] = module
    return module


def load_program(path: str) -> types.ModuleType:
    """Import a program module from its file path."""
    name = "compat_program_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} PROGRAM.py", file=sys.stderr)
        return 2
    install()
    stdout = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):  # only the outcome goes to stdout
        program = load_program(argv[1])
        outcome = asyncio.run(program.main())
    stdout.write(json.dumps(outcome, sort_keys=True) + "\n")
    stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
