"""The public API: what ``fastapi_busproxy`` exports, and what stays in its modules."""

from __future__ import annotations

import importlib

import pytest

import fastapi_busproxy

EXPORTED = [
    "APIKeyHeaderAuth",
    "AsyncQueueBus",
    "BaseWorker",
    "BearerTokenAuth",
    "BusActivateWorkerMessage",
    "BusAddWorkerMessage",
    "BusCancelMessage",
    "BusCancelWorkerMessage",
    "BusClosedError",
    "BusDataMessage",
    "BusDeactivateWorkerMessage",
    "BusEndMessage",
    "BusEndWorkerMessage",
    "BusError",
    "BusFrameMessage",
    "BusFullError",
    "BusJobCancelMessage",
    "BusJobRequestMessage",
    "BusJobResponseMessage",
    "BusJobResponseUrgentMessage",
    "BusJobStreamDataMessage",
    "BusJobStreamEndMessage",
    "BusJobStreamStartMessage",
    "BusJobUpdateMessage",
    "BusJobUpdateRequestMessage",
    "BusJobUpdateUrgentMessage",
    "BusLocalMessage",
    "BusMessage",
    "BusProxyError",
    "BusProxySettings",
    "BusSession",
    "BusSystemMessage",
    "BusUnavailableError",
    "BusWorkerErrorMessage",
    "BusWorkerLocalErrorMessage",
    "BusWorkerReadyMessage",
    "BusWorkerRegistryMessage",
    "CloseCode",
    "CloseInfo",
    "ConfigurationError",
    "DuplicateWorkerError",
    "ForwardingRules",
    "Frame",
    "FrameDirection",
    "HandshakeRejectedError",
    "Identity",
    "InMemoryBus",
    "Interest",
    "InvalidStateError",
    "JSONMessageSerializer",
    "JobCancelledError",
    "JobContext",
    "JobError",
    "JobEvent",
    "JobFailedError",
    "JobGroup",
    "JobGroupContext",
    "JobGroupError",
    "JobGroupEvent",
    "JobGroupParams",
    "JobGroupResponse",
    "JobLimits",
    "JobParams",
    "JobStatus",
    "JobTimeoutError",
    "LinkClosedError",
    "LinkStats",
    "MessageDecodeError",
    "MessageEncodeError",
    "MessageSerializer",
    "MsgpackMessageSerializer",
    "Overflow",
    "ProxyError",
    "ReconnectPolicy",
    "RunnerState",
    "SerializationError",
    "Subscription",
    "UnknownEventError",
    "WebSocketProxyClient",
    "WebSocketProxyServer",
    "WorkerActivationArgs",
    "WorkerBus",
    "WorkerErrorData",
    "WorkerNotReadyError",
    "WorkerReadyData",
    "WorkerRegistry",
    "WorkerRegistryEntry",
    "WorkerRunner",
    "WorkerSession",
    "WorkerState",
    "WorkerUnreachableError",
    "__version__",
    "bus_proxy_router",
    "bus_status",
    "configure_bus",
    "get_runner",
    "include_bus_link",
    "include_bus_proxy",
    "include_metrics",
    "include_status_page",
    "job",
    "metrics_dict",
    "metrics_router",
    "register_wire_type",
    "runner_of",
    "status_router",
    "worker_ready",
]

# Public in their module, on purpose not re-exported by the package.
MODULE_ONLY = {
    "bus": {"DEFAULT_CAPACITY", "DEFAULT_SYSTEM_CAPACITY", "DirectHandler", "MessageHandler"},
    "closecodes": set(),
    "exceptions": set(),
    "interest": {"InterestIndex"},
    "jobs": {"DEFAULT_JOB_EVENT_BUFFER", "resolve_job_params"},
    "jobs.group": {"DEFAULT_JOB_EVENT_BUFFER"},
    "jobs.params": {"resolve_job_params"},
    "jobs.requesting": {"Answer", "JobRequester"},
    "jobs.serving": {"DEFAULT_JOB_LIMITS", "JobHandler", "JobServer"},
    "messages": {
        "is_local_only",
        "mark_origin",
        "set_link_seq",
        "set_trace_context",
        "wire_name_of",
        "wire_type",
    },
    "metrics": {"METRICS", "BusProxyCollector", "MetricFamily", "MetricSpec", "metric_families"},
    "proxy": {"HeadersProvider", "Refusal"},
    "registry": {"RegistryWatch"},
    "runner": set(),
    "serializers": {"DEFAULT_MAX_DEPTH", "DEFAULT_MAX_SIZE"},
    "session": set(),
    "snapshot": {
        "COUNTERS",
        "EndedLinks",
        "RefusalLog",
        "RouteTotals",
        "bus_snapshot",
        "route_of",
    },
    "status": set(),
    "tracing": {"instrument", "is_instrumented", "uninstrument"},
    "worker": set(),
}


def test_the_package_exports_exactly_the_public_api() -> None:
    assert sorted(fastapi_busproxy.__all__) == EXPORTED
    assert len(set(fastapi_busproxy.__all__)) == len(fastapi_busproxy.__all__)


def test_every_exported_name_is_importable() -> None:
    for name in fastapi_busproxy.__all__:
        assert getattr(fastapi_busproxy, name, None) is not None, name
    namespace: dict[str, object] = {}
    exec("from fastapi_busproxy import *", namespace)
    assert set(EXPORTED) <= set(namespace)


@pytest.mark.parametrize("module_name", sorted(MODULE_ONLY))
def test_each_public_name_of_a_module_is_exported_or_known_to_stay_there(module_name: str) -> None:
    module = importlib.import_module(f"fastapi_busproxy.{module_name}")
    for name in module.__all__:
        assert hasattr(module, name), f"{module_name}.__all__ lists {name!r}, which is missing"
    not_exported = set(module.__all__) - set(fastapi_busproxy.__all__)
    assert not_exported == MODULE_ONLY[module_name]
    for name in set(module.__all__) & set(fastapi_busproxy.__all__):
        assert getattr(fastapi_busproxy, name) is getattr(module, name), name


def test_importing_the_package_leaves_pydantic_settings_for_later() -> None:
    # A fresh interpreter: here the test session has long imported everything.
    import subprocess
    import sys

    code = (
        "import sys, fastapi_busproxy\n"
        "assert 'pydantic_settings' not in sys.modules, 'imported at once'\n"
        "assert 'prometheus_client' not in sys.modules, 'an extra imported at once'\n"

        "from fastapi_busproxy import BusProxySettings\n"
        "assert BusProxySettings.__module__ == 'fastapi_busproxy.settings'\n"
        "try:\n"
        "    fastapi_busproxy.NoSuchName\n"
        "except AttributeError as exc:\n"
        "    assert 'NoSuchName' in str(exc)\n"
        "else:\n"
        "    raise SystemExit('no AttributeError')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
