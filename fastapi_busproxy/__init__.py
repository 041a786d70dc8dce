"""fastapi_busproxy: a worker bus for agents, bridged between processes by WebSockets.

The public API is what ``__all__`` lists; everything else is private and may change.
"""

from typing import TYPE_CHECKING, Any

from .bus import AsyncQueueBus, InMemoryBus, Subscription, WorkerBus
from .closecodes import CloseCode
from .exceptions import (
    BusClosedError,
    BusError,
    BusFullError,
    BusProxyError,
    BusUnavailableError,
    ConfigurationError,
    DuplicateWorkerError,
    HandshakeRejectedError,
    InvalidStateError,
    JobCancelledError,
    JobError,
    JobFailedError,
    JobGroupError,
    JobTimeoutError,
    LinkClosedError,
    MessageDecodeError,
    MessageEncodeError,
    ProxyError,
    SerializationError,
    UnknownEventError,
    WorkerNotReadyError,
    WorkerUnreachableError,
)
from .interest import Interest
from .jobs import (
    JobContext,
    JobEvent,
    JobGroup,
    JobGroupContext,
    JobGroupEvent,
    JobGroupParams,
    JobGroupResponse,
    JobParams,
    job,
)
from .jobs.serving import JobLimits
from .lifespan import configure_bus, get_runner, runner_of
from .links import include_bus_link
from .messages import (
    BusActivateWorkerMessage,
    BusAddWorkerMessage,
    BusCancelMessage,
    BusCancelWorkerMessage,
    BusDataMessage,
    BusDeactivateWorkerMessage,
    BusEndMessage,
    BusEndWorkerMessage,
    BusFrameMessage,
    BusJobCancelMessage,
    BusJobRequestMessage,
    BusJobResponseMessage,
    BusJobResponseUrgentMessage,
    BusJobStreamDataMessage,
    BusJobStreamEndMessage,
    BusJobStreamStartMessage,
    BusJobUpdateMessage,
    BusJobUpdateRequestMessage,
    BusJobUpdateUrgentMessage,
    BusLocalMessage,
    BusMessage,
    BusSystemMessage,
    BusWorkerErrorMessage,
    BusWorkerLocalErrorMessage,
    BusWorkerReadyMessage,
    BusWorkerRegistryMessage,
    Frame,
    FrameDirection,
    JobStatus,
    Overflow,
    WorkerRegistryEntry,
    register_wire_type,
)
from .metrics import include_metrics, metrics_dict, metrics_router
from .proxy import (
    CloseInfo,
    ForwardingRules,
    LinkStats,
    ReconnectPolicy,
    WebSocketProxyClient,
    WebSocketProxyServer,
)
from .registry import WorkerErrorData, WorkerReadyData, WorkerRegistry
from .routing import BusSession, bus_proxy_router, include_bus_proxy
from .runner import RunnerState, WorkerRunner
from .security import APIKeyHeaderAuth, BearerTokenAuth, Identity
from .serializers import JSONMessageSerializer, MessageSerializer, MsgpackMessageSerializer
from .session import WorkerSession
from .status import bus_status, include_status_page, status_router
from .worker import BaseWorker, WorkerActivationArgs, WorkerState, worker_ready

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .settings import BusProxySettings


def __getattr__(name: str) -> Any:
    # BusProxySettings is imported on first use: pydantic-settings would otherwise be a third
    # of the time `import fastapi_busproxy` takes, for apps that never read the environment.
    if name == "BusProxySettings":
        from .settings import BusProxySettings

        return BusProxySettings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
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
    "__version__",
]
