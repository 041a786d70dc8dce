"""The exceptions of fastapi_busproxy.

Every exception the library raises on purpose derives from :class:`BusProxyError`::

    BusProxyError
    ├── ConfigurationError        a caller's mistake: a bad argument, a duplicate name
    │   ├── DuplicateWorkerError  a worker name already in use in the runner
    │   └── UnknownEventError     an event name the object does not emit
    ├── InvalidStateError         a call in the wrong state (also a :class:`RuntimeError`)
    ├── BusError
    │   ├── BusClosedError        the bus is not running (not started, or stopped)
    │   ├── BusFullError          a subscriber's queue stayed full past the send timeout
    │   └── BusUnavailableError   a remote bus backend (Redis) cannot be reached
    ├── SerializationError
    │   ├── MessageEncodeError    a message cannot be written in the wire format
    │   └── MessageDecodeError    bytes from a peer are not an acceptable message
    ├── JobError
    │   ├── JobFailedError        the job ended with status "failed" or "error"
    │   ├── JobCancelledError     the requester cancelled the job
    │   ├── JobTimeoutError       no answer in time (also a :class:`TimeoutError`)
    │   └── JobGroupError         a job group did not complete
    │       └── WorkerNotReadyError  a target was not ready in time (also a JobTimeoutError)
    └── ProxyError
        ├── HandshakeRejectedError  the server answered the WebSocket handshake with 401/403
        └── LinkClosedError         a link was used after it closed

Exceptions of the libraries underneath (``websockets``, ``redis``, ``orjson``) are translated at
the boundary where they occur and chained (``raise ... from exc``).
"""

from __future__ import annotations

__all__ = [
    "BusClosedError",
    "BusError",
    "BusFullError",
    "BusProxyError",
    "BusUnavailableError",
    "ConfigurationError",
    "DuplicateWorkerError",
    "HandshakeRejectedError",
    "InvalidStateError",
    "JobCancelledError",
    "JobError",
    "JobFailedError",
    "JobGroupError",
    "JobTimeoutError",
    "LinkClosedError",
    "MessageDecodeError",
    "MessageEncodeError",
    "ProxyError",
    "SerializationError",
    "UnknownEventError",
    "WorkerNotReadyError",
]


class BusProxyError(Exception):
    """Base class of every exception raised by fastapi_busproxy."""


class ConfigurationError(BusProxyError, ValueError):
    """A caller's mistake: a bad argument or a name already taken.

    The message says what to do instead.
    """


class InvalidStateError(BusProxyError, RuntimeError):
    """A call in the wrong state: a worker used before it was added to a runner, an answer to a
    job that is not being served, a runner started again after it finished.

    A :class:`RuntimeError`, as the reference raises in these cases.
    """


class DuplicateWorkerError(ConfigurationError):
    """A worker with this name is already running in the runner."""


class UnknownEventError(ConfigurationError):
    """``event_handler()`` was given an event name the object does not emit."""


class BusError(BusProxyError):
    """A problem of the bus itself."""


class BusClosedError(BusError):
    """The bus is not running: it was never started, or it has been stopped."""


class BusFullError(BusError):
    """A subscriber's queue stayed full for longer than the sender was willing to wait."""


class BusUnavailableError(BusError):
    """A remote bus backend (such as Redis) cannot be reached; the message was not sent."""


class SerializationError(BusProxyError):
    """Base class of the codec errors."""


class MessageEncodeError(SerializationError):
    """A message holds a value the wire format cannot carry."""


class MessageDecodeError(SerializationError):
    """Bytes received from a peer are not an acceptable message.

    Raised for malformed or oversized input, a top level that is not a message, a type name that
    is not registered, missing or wrongly typed fields, or nesting that is too deep. The message
    says which; nothing named by the input is ever imported.
    """


class JobError(BusProxyError):
    """A job did not complete.

    Attributes:
        job_id: the job's identifier.
        status: the final status reported, or ``None`` when there was no answer.
        response: the response payload sent with the final status, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        job_id: str,
        status: str | None = None,
        response: dict[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.status = status
        self.response = response


class JobFailedError(JobError):
    """The serving worker answered with status ``failed`` or ``error``."""


class JobCancelledError(JobError):
    """The requester cancelled the job (:meth:`~fastapi_busproxy.BaseWorker.cancel_job_group`,
    or the requesting worker stopped)."""


class JobTimeoutError(JobError, TimeoutError):
    """The job was not answered within its timeout."""


class JobGroupError(JobError):
    """A job group did not complete: a member failed (with ``cancel_on_error``), the group was
    cancelled, or it timed out. ``responses`` holds what arrived before."""

    def __init__(
        self,
        message: str,
        *,
        job_id: str = "",
        status: str | None = None,
        response: dict[str, object] | None = None,
        responses: dict[str, dict[str, object]] | None = None,
    ) -> None:
        super().__init__(message, job_id=job_id, status=status, response=response)
        self.responses = dict(responses or {})


class WorkerNotReadyError(JobGroupError, JobTimeoutError):
    """A job's target worker was not ready within the job's timeout; nothing was sent."""


class WorkerUnreachableError(WorkerNotReadyError):
    """The link to a job's target worker has given up (the handshake was refused, the
    retries ran out...): waiting would only end in a timeout, so the job fails at once.
    ``__cause__`` is the link's own error."""


class ProxyError(BusProxyError):
    """Base class of errors of the WebSocket proxies."""


class HandshakeRejectedError(ProxyError):
    """The server refused the WebSocket handshake with an HTTP status (401 or 403).

    The client proxy does not retry after this: credentials will not fix themselves.

    Attributes:
        status_code: the HTTP status of the refusal.
    """

    def __init__(self, message: str, *, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class LinkClosedError(ProxyError):
    """A proxy link was used after it was closed."""
