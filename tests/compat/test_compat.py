"""Differential tests: each program in ``programs/`` must give the same outcome on our package as
on pipecat-ai 1.14, whose worker API ours follows.

A program is written in the pipecat worker idiom but imports only from ``fastapi_busproxy``,
as a ported pipecat program would. ``test_<scenario>_on_ours`` imports it and runs its
``main()`` here; ``test_<scenario>_on_reference`` runs the very same file in the side venv,
where ``reference_shim.py`` makes ``fastapi_busproxy`` stand for pipecat's own classes. Both
must equal the EXPECTED outcome written out below, which was recorded from the reference
(run ``<side python> tests/compat/reference_shim.py tests/compat/programs/<x>.py`` to see it).

Where pipecat's own behaviour is a defect this project deliberately improves (a job that hangs
forever, an inactive requester that never gets its answers, ...), the scenario is built to
stay clear of it rather than record it; ``README.md`` (next to this file) says what was seen.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.compat.side_env import REPO, require_pipecat_python

HERE = Path(__file__).resolve().parent
PROGRAMS = HERE / "programs"
SHIM = HERE / "reference_shim.py"

# Variables of our environment that must not leak into the side venv's python.
_NOT_INHERITED = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PIPECAT_SETUP_FILES")


@pytest.fixture(scope="session")
def pipecat_python() -> str:
    return require_pipecat_python()


def as_json(outcome: Any) -> Any:
    """The outcome as the reference side reports it: through JSON (str enums become str, ...)."""
    return json.loads(json.dumps(outcome, sort_keys=True))


async def run_on_ours(program: str) -> Any:
    module = importlib.import_module(f"tests.compat.programs.{program}")
    return as_json(await asyncio.wait_for(module.main(), 30))


def run_on_reference(python: str, program: str) -> Any:
    env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
    result = subprocess.run(
        [python, str(SHIM), str(PROGRAMS / f"{program}.py")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"{program} failed on the reference:\n{result.stderr}"
    lines = result.stdout.strip().splitlines()
    assert lines, f"{program} printed no outcome on the reference:\n{result.stderr}"
    return json.loads(lines[-1])


reference = pytest.mark.timeout(90)  # the subprocess has 60 s of its own


# ------------------------------------------------------------------------------------------------
# server_override
# A server overriding on_job_request (calling super) answers; ``.response`` is its dict.

SERVER_OVERRIDE: dict[str, Any] = {
    "named_job": {"greeting": "hello ada", "job_name": "greet", "requester": "client"},
    "run_returned": True,
    "seen_by_on_job_response": [
        {
            "completed": True,
            "response": {"greeting": "hello ada", "job_name": "greet", "requester": "client"},
            "source": "greeter",
            "status": "completed",
            "target": "client",
        },
        {
            "completed": True,
            "response": {"greeting": "hello world", "job_name": None, "requester": "client"},
            "source": "greeter",
            "status": "completed",
            "target": "client",
        },
    ],
    "unnamed_job": {"greeting": "hello world", "job_name": None, "requester": "client"},
}


@pytest.mark.anyio
async def test_server_override_on_ours() -> None:
    assert await run_on_ours("server_override") == SERVER_OVERRIDE


@reference
def test_server_override_on_reference(pipecat_python: str) -> None:
    assert run_on_reference(pipecat_python, "server_override") == SERVER_OVERRIDE


# ------------------------------------------------------------------------------------------------
# sensor_event_handler
# A plain BaseWorker served by an on_job_request event handler that answers later.

SENSOR_EVENT_HANDLER: dict[str, Any] = {
    "requests": [["controller", "sensor", None], ["controller", "set_reading", {"celsius": 21.5}]],
    "run_returned": True,
    "sensor": {"celsius": 21.5, "sensor": "t1"},
    "set_reading": {"ok": True},
}


@pytest.mark.anyio
async def test_sensor_event_handler_on_ours() -> None:
    assert await run_on_ours("sensor_event_handler") == SENSOR_EVENT_HANDLER


@reference
def test_sensor_event_handler_on_reference(pipecat_python: str) -> None:
    assert run_on_reference(pipecat_python, "sensor_event_handler") == SENSOR_EVENT_HANDLER


# ------------------------------------------------------------------------------------------------
# queue_worker
# start()/stop() overrides, a consumer task answering after on_job_request returned.
# (pipecat called stop() three times; the program records first calls only.)

QUEUE_WORKER: dict[str, Any] = {
    "answers": [{"square": 4}, {"square": 9}, {"square": 16}],
    "consumer_cancelled": True,
    "enqueued": [2, 3, 4],
    "hooks": ["start", "stop"],
}


@pytest.mark.anyio
async def test_queue_worker_on_ours() -> None:
    assert await run_on_ours("queue_worker") == QUEUE_WORKER


@reference
def test_queue_worker_on_reference(pipecat_python: str) -> None:
    assert run_on_reference(pipecat_python, "queue_worker") == QUEUE_WORKER


# ------------------------------------------------------------------------------------------------
# job_statuses
# Only "failed" and "error" raise (JobError) on leaving ``async with self.job``; a
# "cancelled" answer completes the job like "completed" (on_job_completed fires). ``.response``
# is the answer's dict, or {} when the server gave none, whatever the status.

JOB_STATUSES: dict[str, Any] = {
    "cancelled_with_response": {
        "hooks": [
            ["on_job_response", ["cancelled", {"said": "cancelled"}]],
            ["on_job_completed", {"server": {"said": "cancelled"}}],
        ],
        "raised": None,
        "response": {"said": "cancelled"},
    },
    "cancelled_without_response": {
        "hooks": [["on_job_response", ["cancelled", None]], ["on_job_completed", {"server": {}}]],
        "raised": None,
        "response": {},
    },
    "completed_with_response": {
        "hooks": [
            ["on_job_response", ["completed", {"said": "completed"}]],
            ["on_job_completed", {"server": {"said": "completed"}}],
        ],
        "raised": None,
        "response": {"said": "completed"},
    },
    "completed_without_response": {
        "hooks": [["on_job_response", ["completed", None]], ["on_job_completed", {"server": {}}]],
        "raised": None,
        "response": {},
    },
    "error_with_response": {
        "hooks": [
            ["on_job_response", ["error", {"said": "error"}]],
            ["on_job_error", ["error", {"said": "error"}]],
        ],
        "raised": "JobError",
        "response": {"said": "error"},
    },
    "error_without_response": {
        "hooks": [["on_job_response", ["error", None]], ["on_job_error", ["error", None]]],
        "raised": "JobError",
        "response": {},
    },
    "failed_with_response": {
        "hooks": [
            ["on_job_response", ["failed", {"said": "failed"}]],
            ["on_job_error", ["failed", {"said": "failed"}]],
        ],
        "raised": "JobError",
        "response": {"said": "failed"},
    },
    "failed_without_response": {
        "hooks": [["on_job_response", ["failed", None]], ["on_job_error", ["failed", None]]],
        "raised": "JobError",
        "response": {},
    },
    "server_on_job_cancelled": 0,
}


@pytest.mark.anyio
async def test_job_statuses_on_ours() -> None:
    assert await run_on_ours("job_statuses") == JOB_STATUSES


@reference
def test_job_statuses_on_reference(pipecat_python: str) -> None:
    assert run_on_reference(pipecat_python, "job_statuses") == JOB_STATUSES


# ------------------------------------------------------------------------------------------------
# job_updates_streams
# A stream's end ends the job (its data is the response, {} without data) and fires
# on_job_stream_end and on_job_completed, but not on_job_response.

JOB_UPDATES_STREAMS: dict[str, Any] = {
    "bare_stream": {
        "events": [["JobEvent", "stream_start", None], ["JobEvent", "stream_end", None]],
        "hooks": [
            ["on_job_stream_start", None],
            ["on_job_stream_end", None],
            ["on_job_completed", {"server": {}}],
        ],
        "response": {},
    },
    "progress": {
        "events": [["JobEvent", "update", {"pct": 50}], ["JobEvent", "update", {"asked": True}]],
        "hooks": [
            ["on_job_update", {"pct": 50}],
            ["on_job_update", {"asked": True}],
            ["on_job_response", "completed", {"done": True}],
            ["on_job_completed", {"server": {"done": True}}],
        ],
        "response": {"done": True},
    },
    "respond_after_stream_end_raised_runtime_error": True,
    "stream": {
        "events": [
            ["JobEvent", "stream_start", {"format": "text"}],
            ["JobEvent", "stream_data", {"text": "hel"}],
            ["JobEvent", "stream_data", {"text": "lo"}],
            ["JobEvent", "stream_end", {"text": "hello"}],
        ],
        "hooks": [
            ["on_job_stream_start", {"format": "text"}],
            ["on_job_stream_data", {"text": "hel"}],
            ["on_job_stream_data", {"text": "lo"}],
            ["on_job_stream_end", {"text": "hello"}],
            ["on_job_completed", {"server": {"text": "hello"}}],
        ],
        "response": {"text": "hello"},
    },
    "update_requested_by": "client",
}


@pytest.mark.anyio
async def test_job_updates_streams_on_ours() -> None:
    assert await run_on_ours("job_updates_streams") == JOB_UPDATES_STREAMS


@reference
def test_job_updates_streams_on_reference(pipecat_python: str) -> None:
    assert run_on_reference(pipecat_python, "job_updates_streams") == JOB_UPDATES_STREAMS


# ------------------------------------------------------------------------------------------------
# job_cancel
# Leaving ``async with`` with an exception propagates that exception; cancel_job_group()
# inside the block makes the normal exit raise JobError. The server's handler is cancelled
# before its on_job_cancelled runs, and it answers "cancelled" on its own.

JOB_CANCEL: dict[str, Any] = {
    "cancel": {
        "after_cancel_job_group": "still inside the block",
        "events": [["update", {"started": True}]],
        "on_job_response": ["server", "cancelled", None],
        "raised": "JobError",
        "response": {},
        "server": ["handler cancelled", ["on_job_cancelled", "client"]],
    },
    "leave": {
        "events": [["update", {"started": True}]],
        "on_job_response": ["server", "cancelled", None],
        "raised": "ValueError",
        "response": {},
        "server": ["handler cancelled", ["on_job_cancelled", "client"]],
    },
}


@pytest.mark.anyio
async def test_job_cancel_on_ours() -> None:
    assert await run_on_ours("job_cancel") == JOB_CANCEL


@reference
def test_job_cancel_on_reference(pipecat_python: str) -> None:
    assert run_on_reference(pipecat_python, "job_cancel") == JOB_CANCEL


# ------------------------------------------------------------------------------------------------
# job_timeout
# A job that times out raises JobError on leaving the block (an ``async for`` over it
# just ends); a group, JobGroupError. A worker that never registers makes *entering* the
# block raise, and it is JobGroupError even for a single ``self.job(...)``.

JOB_TIMEOUT: dict[str, Any] = {
    "absent_group": {"entered": False, "raised": "JobGroupError"},
    "absent_single": {"entered": False, "raised": "JobGroupError"},
    "cancelled_answers_from": ["silent", "silent"],
    "group": {"raised": "JobGroupError", "responses": {"quick": {"quick": True}}},
    "silent_on_job_cancelled": 2,
    "single": {"raised": "JobError", "response": {}, "stages": ["entered", "async for ended"]},
}


@pytest.mark.anyio
async def test_job_timeout_on_ours() -> None:
    assert await run_on_ours("job_timeout") == JOB_TIMEOUT


@reference
def test_job_timeout_on_reference(pipecat_python: str) -> None:
    assert run_on_reference(pipecat_python, "job_timeout") == JOB_TIMEOUT


# ------------------------------------------------------------------------------------------------
# job_group
# A group's events per worker, its responses, on_job_completed (JobGroupResponse), and a
# fire-and-forget request_job_group.

JOB_GROUP: dict[str, Any] = {
    "all_group_events": True,
    "event_types": ["update", "stream_start", "stream_data", "stream_end"],
    "events": {
        "a": [["update", {"progress": 50}]],
        "b": [
            ["stream_start", {"kind": "digits"}],
            ["stream_data", {"digit": 1}],
            ["stream_data", {"digit": 2}],
            ["stream_end", {"by": "b", "count": 2}],
        ],
        "c": [["update", {"progress": 50}]],
    },
    "fire_and_forget_on_job_completed": {
        "is_group_response": True,
        "responses": {"a": {"by": "a", "y": 10}, "c": {"by": "c", "y": 10}},
    },
    "on_job_completed": {
        "is_group_response": True,
        "responses": {
            "a": {"by": "a", "y": 42},
            "b": {"by": "b", "count": 2},
            "c": {"by": "c", "y": 42},
        },
    },
    "responses": {
        "a": {"by": "a", "y": 42},
        "b": {"by": "b", "count": 2},
        "c": {"by": "c", "y": 42},
    },
}


@pytest.mark.anyio
async def test_job_group_on_ours() -> None:
    assert await run_on_ours("job_group") == JOB_GROUP


@reference
def test_job_group_on_reference(pipecat_python: str) -> None:
    assert run_on_reference(pipecat_python, "job_group") == JOB_GROUP


# ------------------------------------------------------------------------------------------------
# job_group_errors
# cancel_on_error=True: "error" from one member raises JobGroupError, fires on_job_error
# (not on_job_completed), and cancels the others (they answer "cancelled"); ``responses`` has
# only the erring member. cancel_on_error=False: the group completes with all three answers.

JOB_GROUP_ERRORS: dict[str, Any] = {
    "cancel_on_error": {
        "on_job_response": [
            ["a", "cancelled", None],
            ["b", "error", {"why": "broken"}],
            ["c", "cancelled", None],
        ],
        "raised": "JobGroupError",
        "responses": {"b": {"why": "broken"}},
    },
    "cancelled_members": ["a", "c"],
    "no_cancel_on_error": {
        "on_job_response": [
            ["a", "completed", {"by": "a"}],
            ["b", "error", {"why": "broken"}],
            ["c", "completed", {"by": "c"}],
        ],
        "raised": None,
        "responses": {"a": {"by": "a"}, "b": {"why": "broken"}, "c": {"by": "c"}},
    },
    "on_job_cancelled": [],
    "on_job_completed": [{"a": {"by": "a"}, "b": {"why": "broken"}, "c": {"by": "c"}}],
    "on_job_error": [["b", "error", {"why": "broken"}]],
}


@pytest.mark.anyio
async def test_job_group_errors_on_ours() -> None:
    assert await run_on_ours("job_group_errors") == JOB_GROUP_ERRORS


@reference
def test_job_group_errors_on_reference(pipecat_python: str) -> None:
    assert run_on_reference(pipecat_python, "job_group_errors") == JOB_GROUP_ERRORS


# ------------------------------------------------------------------------------------------------
# job_handlers
# @job dispatch by name, sequential=True runs one at a time in order, other names and
# unnamed jobs fall back to on_job_request. The on_job_request event fires for every request.

JOB_HANDLERS: dict[str, Any] = {
    "no_name": {"handler": "on_job_request", "job_name": None},
    "on_job_request_event": [
        None,
        "other",
        "together",
        "together",
        "together",
        "write",
        "write",
        "write",
    ],
    "other_name": {"handler": "on_job_request", "job_name": "other"},
    "together": [
        {"handler": "on_together"},
        {"handler": "on_together"},
        {"handler": "on_together"},
    ],
    "write_log": [
        ["start", 1, 1],
        ["end", 1],
        ["start", 2, 1],
        ["end", 2],
        ["start", 3, 1],
        ["end", 3],
    ],
    "writes_answered": [1, 2, 3],
}


@pytest.mark.anyio
async def test_job_handlers_on_ours() -> None:
    assert await run_on_ours("job_handlers") == JOB_HANDLERS


@reference
def test_job_handlers_on_reference(pipecat_python: str) -> None:
    assert run_on_reference(pipecat_python, "job_handlers") == JOB_HANDLERS


# ------------------------------------------------------------------------------------------------
# handoff
# on_activated(None) at start for an active worker, never for an inactive one;
# activate_worker(deactivate_self=True) makes the caller inactive at once; the target's
# on_activated gets the args as a dict (``WorkerActivationArgs.to_dict()``), also
# ``activation_args``; on_deactivated clears ``activation_args``.

HANDOFF: dict[str, Any] = {
    "a_active_right_after_handing_over": False,
    "args_round_trip": {"metadata": {"k": 1}},
    "before_run": {"a": [True, None], "b": [False, None], "c": [False, None]},
    "empty_args": {},
    "logs": {
        "a": [
            ["on_activated", None, True, None],
            ["on_deactivated", False, None],
            ["both done", False, True],
        ],
        "b": [
            [
                "on_activated",
                {"metadata": {"topic": "billing"}},
                True,
                {"metadata": {"topic": "billing"}},
            ]
        ],
        "c": [["still inactive", True]],
    },
}


@pytest.mark.anyio
async def test_handoff_on_ours() -> None:
    assert await run_on_ours("handoff") == HANDOFF


@reference
def test_handoff_on_reference(pipecat_python: str) -> None:
    assert run_on_reference(pipecat_python, "handoff") == HANDOFF


# ------------------------------------------------------------------------------------------------
# registry_watch
# A worker is in the registry once it has started, not when added. A watch fires once;
# at once when already registered; the same handler again is a no-op. @worker_ready fires
# before on_worker_ready.

REGISTRY_WATCH: dict[str, Any] = {
    "after_add_workers": {
        "a_in_registry": False,
        "get_a": None,
        "get_nobody": None,
        "local_workers": [],
        "nobody_in_registry": False,
    },
    "before_add_workers": {
        "a_in_registry": False,
        "get_a": None,
        "get_nobody": None,
        "local_workers": [],
        "nobody_in_registry": False,
    },
    "early_watch_fired_at_once": False,
    "late_watch_fired_at_once": True,
    "observer_saw": {"a": ["on_worker_ready"], "b": ["@worker_ready", "on_worker_ready"]},
    "running": {
        "a_in_registry": True,
        "get_a": ["WorkerReadyData", "a"],
        "get_nobody": None,
        "local_workers": ["a", "b", "c", "observer"],
        "nobody_in_registry": False,
    },
    "watch_calls": [["early", "a", True], ["late", "a", True]],
}


@pytest.mark.anyio
async def test_registry_watch_on_ours() -> None:
    assert await run_on_ours("registry_watch") == REGISTRY_WATCH


@reference
def test_registry_watch_on_reference(pipecat_python: str) -> None:
    assert run_on_reference(pipecat_python, "registry_watch") == REGISTRY_WATCH


# ------------------------------------------------------------------------------------------------
# session_end
# Any of worker.end()/cancel(), runner.end()/cancel() stops every worker; run() returns.
# on_activated runs inside start() (before super().start() returns); on_ready comes after
# every worker has started.

SESSION_END: dict[str, Any] = {
    "runner.cancel": {
        "logs": {
            "a": ["start", "on_activated", "start returned", "stop"],
            "b": ["start", "on_activated", "start returned", "stop"],
            "idle": ["start", "start returned", "stop"],
        },
        "run_returned": True,
        "started_at_on_ready": ["a", "b", "idle"],
    },
    "runner.end": {
        "logs": {
            "a": ["start", "on_activated", "start returned", "stop"],
            "b": ["start", "on_activated", "start returned", "stop"],
            "idle": ["start", "start returned", "stop"],
        },
        "run_returned": True,
        "started_at_on_ready": ["a", "b", "idle"],
    },
    "worker.cancel": {
        "logs": {
            "a": ["start", "on_activated", "start returned", "stop"],
            "b": ["start", "on_activated", "start returned", "stop"],
            "idle": ["start", "start returned", "stop"],
        },
        "run_returned": True,
        "started_at_on_ready": ["a", "b", "idle"],
    },
    "worker.end": {
        "logs": {
            "a": ["start", "on_activated", "start returned", "stop"],
            "b": ["start", "on_activated", "start returned", "stop"],
            "idle": ["start", "start returned", "stop"],
        },
        "run_returned": True,
        "started_at_on_ready": ["a", "b", "idle"],
    },
}


@pytest.mark.anyio
async def test_session_end_on_ours() -> None:
    assert await run_on_ours("session_end") == SESSION_END


@reference
def test_session_end_on_reference(pipecat_python: str) -> None:
    assert run_on_reference(pipecat_python, "session_end") == SESSION_END


# ------------------------------------------------------------------------------------------------
# early_job
# Jobs asked for before run() wait for the server to be ready, then complete.

EARLY_JOB: dict[str, Any] = {
    "answers": [{"ok": True, "x": 1}, {"ok": True, "x": 2}],
    "run_returned": True,
    "server_registered_before_run": False,
    "server_registered_when_answered": True,
}


@pytest.mark.anyio
async def test_early_job_on_ours() -> None:
    assert await run_on_ours("early_job") == EARLY_JOB


@reference
def test_early_job_on_reference(pipecat_python: str) -> None:
    assert run_on_reference(pipecat_python, "early_job") == EARLY_JOB


# ------------------------------------------------------------------------------------------------
# properties_errors
# bus/registry/worker_runner raise RuntimeError before add_workers; the job-answering
# calls raise RuntimeError for a job id the worker is not serving.

PROPERTIES_ERRORS: dict[str, Any] = {
    "after_add": {
        "bus is a WorkerBus": True,
        "runner.bus is bus": True,
        "runner.get_worker": True,
        "runner.get_worker unknown": None,
        "worker.bus is runner.bus": True,
        "worker.registry is runner.registry": True,
        "worker.worker_runner is runner": True,
    },
    "before_add": {
        "activation_args": None,
        "active": True,
        "bus_raises": True,
        "job_calls_raise": {
            "send_job_response": True,
            "send_job_stream_data": True,
            "send_job_stream_end": True,
            "send_job_stream_start": True,
            "send_job_update": True,
        },
        "name": "w",
        "registry_raises": True,
        "worker_runner_raises": True,
    },
    "running_job_calls_raise": {
        "send_job_response": True,
        "send_job_stream_data": True,
        "send_job_stream_end": True,
        "send_job_stream_start": True,
        "send_job_update": True,
    },
}


@pytest.mark.anyio
async def test_properties_errors_on_ours() -> None:
    assert await run_on_ours("properties_errors") == PROPERTIES_ERRORS


@reference
def test_properties_errors_on_reference(pipecat_python: str) -> None:
    assert run_on_reference(pipecat_python, "properties_errors") == PROPERTIES_ERRORS


# ------------------------------------------------------------------------------------------------
# serializers
# A MessageSerializer needs both serialize and deserialize; JSONMessageSerializer
# round-trips job messages.

SERIALIZERS: dict[str, Any] = {
    "half_serializer": "TypeError",
    "is_a_message_serializer": True,
    "own_bytes": True,
    "own_round_trip": {"reason": "bye", "source": "a", "target": None, "type": "BusEndMessage"},
    "request": {
        "bytes": True,
        "restored": {
            "job_id": "j1",
            "job_name": "add",
            "payload": {"xs": [1, 2.5, "3"]},
            "source": "a",
            "target": "b",
            "type": "BusJobRequestMessage",
        },
    },
    "response": {
        "bytes": True,
        "restored": {
            "job_id": "j1",
            "response": {"why": None},
            "source": "b",
            "status": "failed",
            "target": "a",
            "type": "BusJobResponseMessage",
        },
    },
    "restored_status_equals_job_status": True,
}


@pytest.mark.anyio
async def test_serializers_on_ours() -> None:
    assert await run_on_ours("serializers") == SERIALIZERS


@reference
def test_serializers_on_reference(pipecat_python: str) -> None:
    assert run_on_reference(pipecat_python, "serializers") == SERIALIZERS


# ------------------------------------------------------------------------------------------------
# custom_message
# A user-defined BusDataMessage, addressed and broadcast, reaches on_bus_message.

CUSTOM_MESSAGE: dict[str, Any] = {
    "b": [
        {
            "celsius": 21.5,
            "is_bus_data_message": True,
            "place": "kitchen",
            "source": "a",
            "target": "b",
            "type": "Temperature",
        },
        {
            "celsius": 19.0,
            "is_bus_data_message": True,
            "place": "hall",
            "source": "a",
            "target": None,
            "type": "Temperature",
        },
    ],
    "c": [
        {
            "celsius": 19.0,
            "is_bus_data_message": True,
            "place": "hall",
            "source": "a",
            "target": None,
            "type": "Temperature",
        }
    ],
}


@pytest.mark.anyio
async def test_custom_message_on_ours() -> None:
    assert await run_on_ours("custom_message") == CUSTOM_MESSAGE


@reference
def test_custom_message_on_reference(pipecat_python: str) -> None:
    assert run_on_reference(pipecat_python, "custom_message") == CUSTOM_MESSAGE
