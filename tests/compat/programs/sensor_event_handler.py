"""A controller that serves a "sensor" job from an ``on_job_request`` event handler, answered later.

The controller is a plain ``BaseWorker``: all its serving is done by an event handler. A
"sensor" request is held until a "set_reading" request supplies the value; the handler then
answers both. The client asks for the sensor first and supplies the reading from inside that
job's ``async with`` block.
"""

from __future__ import annotations

import asyncio

from fastapi_busproxy import BaseWorker, JobParams, WorkerRunner


async def main() -> dict:
    outcome: dict = {"requests": []}
    reading: dict = {}
    reading_set = asyncio.Event()

    controller = BaseWorker("controller")
    client = BaseWorker("client")

    @controller.event_handler("on_job_request")
    async def on_job_request(worker, message):
        outcome["requests"].append([worker.name, message.job_name, message.payload])
        if message.job_name == "set_reading":
            reading.update(message.payload)
            reading_set.set()
            await worker.send_job_response(message.job_id, {"ok": True})
        elif message.job_name == "sensor":
            await reading_set.wait()
            await worker.send_job_response(message.job_id, {"sensor": "t1", **reading})

    async def use_the_sensor():
        async with client.job("controller", params=JobParams(name="sensor")) as sensor:
            async with client.job(
                "controller", params=JobParams(name="set_reading", payload={"celsius": 21.5})
            ) as setter:
                pass
            outcome["set_reading"] = setter.response
        outcome["sensor"] = sensor.response
        await client.end()

    runner = WorkerRunner(handle_sigint=False)

    @runner.event_handler("on_ready")
    async def on_ready(runner):
        client.create_task(use_the_sensor(), "use_the_sensor")

    await runner.add_workers(controller, client)
    await asyncio.wait_for(runner.run(), 10)
    outcome["run_returned"] = True
    return outcome
