"""The ``bus``, ``registry`` and ``worker_runner`` properties, and ``RuntimeError`` for calls made
in the wrong state: before a worker is added to a runner, and for a job id it is not serving.
"""

from __future__ import annotations

import asyncio

from fastapi_busproxy import AsyncQueueBus, BaseWorker, WorkerBus, WorkerRunner


def raises_runtime_error(get) -> bool:
    try:
        get()
    except RuntimeError:
        return True
    return False


async def raises_runtime_error_async(call) -> bool:
    try:
        await call()
    except RuntimeError:
        return True
    return False


async def job_calls(worker: BaseWorker) -> dict:
    """Every call that answers a job, for a job id the worker is not serving."""
    return {
        "send_job_response": await raises_runtime_error_async(
            lambda: worker.send_job_response("no-such-job", {"x": 1})
        ),
        "send_job_update": await raises_runtime_error_async(
            lambda: worker.send_job_update("no-such-job", {"x": 1})
        ),
        "send_job_stream_start": await raises_runtime_error_async(
            lambda: worker.send_job_stream_start("no-such-job")
        ),
        "send_job_stream_data": await raises_runtime_error_async(
            lambda: worker.send_job_stream_data("no-such-job", {"x": 1})
        ),
        "send_job_stream_end": await raises_runtime_error_async(
            lambda: worker.send_job_stream_end("no-such-job")
        ),
    }


async def main() -> dict:
    outcome: dict = {}
    worker = BaseWorker("w")
    outcome["before_add"] = {
        "name": worker.name,
        "active": worker.active,
        "activation_args": worker.activation_args,
        "bus_raises": raises_runtime_error(lambda: worker.bus),
        "registry_raises": raises_runtime_error(lambda: worker.registry),
        "worker_runner_raises": raises_runtime_error(lambda: worker.worker_runner),
        "job_calls_raise": await job_calls(worker),
    }

    bus = AsyncQueueBus()
    runner = WorkerRunner(bus=bus, handle_sigint=False)
    await runner.add_workers(worker)
    outcome["after_add"] = {
        "runner.bus is bus": runner.bus is bus,
        "bus is a WorkerBus": isinstance(runner.bus, WorkerBus),
        "worker.bus is runner.bus": worker.bus is runner.bus,
        "worker.registry is runner.registry": worker.registry is runner.registry,
        "worker.worker_runner is runner": worker.worker_runner is runner,
        "runner.get_worker": runner.get_worker("w") is worker,
        "runner.get_worker unknown": runner.get_worker("nobody"),
    }

    @runner.event_handler("on_ready")
    async def on_ready(runner):
        outcome["running_job_calls_raise"] = await job_calls(worker)
        await runner.end()

    await asyncio.wait_for(runner.run(), 10)
    return outcome
