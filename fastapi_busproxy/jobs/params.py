"""What a job is asked with, and what its requester sees: parameters, events, results."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel

from .._marked import marked_methods
from ..messages import JobStatus

__all__ = [
    "JobEvent",
    "JobGroupEvent",
    "JobGroupParams",
    "JobGroupResponse",
    "JobParams",
    "JobStatus",
    "job",
    "resolve_job_params",
]


class JobParams(BaseModel):
    """How to run a job sent to one worker.

    Attributes:
        name: routes the request to the serving worker's ``@job(name=...)`` handler.
        payload: the data the job works on.
        timeout: seconds to wait for the worker to be ready, and then again for its answer;
            past it the job is cancelled on the serving side and ends with a timeout error.
        label: a human-readable description of the work.
        cancellable: whether :meth:`~fastapi_busproxy.BaseWorker.request_cancel_job_group`
            (a cancellation asked for from outside) may cancel it.
    """

    name: str | None = None
    payload: dict[str, Any] | None = None
    timeout: float | None = None
    label: str | None = None
    cancellable: bool = True


class JobGroupParams(JobParams):
    """How to run a job sent to several workers at once.

    Attributes:
        cancel_on_error: a member answering ``error`` or ``failed`` cancels the others and
            fails the group (the default); ``False`` records that answer like any other.
    """

    cancel_on_error: bool = True


_P = TypeVar("_P", bound=JobParams)


def resolve_job_params(params: _P | None, params_class: type[_P], **fields: Any) -> _P:
    """Merge the keyword form (``name=``, ``payload=``, ...) into a params object.

    Raises:
        TypeError: both ``params`` and keyword fields were given.
    """
    given = {key: value for key, value in fields.items() if value is not None}
    if not given:
        return params if params is not None else params_class()
    if params is not None:
        raise TypeError(f"pass either params or {', '.join(sorted(given))}, not both")
    return params_class(**given)


@dataclass
class JobEvent:
    """An update or stream chunk of a single-worker job, as ``async for`` yields it."""

    UPDATE: ClassVar[str] = "update"
    STREAM_START: ClassVar[str] = "stream_start"
    STREAM_DATA: ClassVar[str] = "stream_data"
    STREAM_END: ClassVar[str] = "stream_end"

    type: str
    data: dict[str, Any] | None = None


@dataclass
class JobGroupEvent:
    """An update or stream chunk from one member of a job group."""

    UPDATE: ClassVar[str] = "update"
    STREAM_START: ClassVar[str] = "stream_start"
    STREAM_DATA: ClassVar[str] = "stream_data"
    STREAM_END: ClassVar[str] = "stream_end"

    type: str
    worker_name: str
    data: dict[str, Any] | None = None


@dataclass
class JobGroupResponse:
    """The answers of a completed job group, by worker name (``{}`` for an empty answer)."""

    job_id: str
    responses: dict[str, dict[str, Any]]


_F = TypeVar("_F", bound=Callable[..., Any])


def job(*, name: str, sequential: bool = False) -> Callable[[_F], _F]:
    """Mark a worker method as the handler of the jobs named ``name``.

    ::

        class Writer(BaseWorker):
            @job(name="draft", sequential=True)
            async def draft(self, message):
                return {"text": "..."}

    Each request runs in its own task, like :meth:`~fastapi_busproxy.BaseWorker.on_job_request`
    (which serves the names no handler claims). ``sequential=True`` runs the requests of this
    name one at a time, in arrival order; the wait counts against the requester's timeout.
    """

    def decorate(method: _F) -> _F:
        method.__busproxy_job__ = (name, sequential)  # type: ignore[attr-defined]
        return method

    return decorate


def collect_job_handlers(obj: object) -> dict[str, tuple[Callable[..., Any], bool]]:
    """The ``@job`` handlers of ``obj`` as bound methods: ``{name: (handler, sequential)}``.

    Raises:
        ConfigurationError: two methods handle the same job name.
    """
    marked = marked_methods(type(obj), "__busproxy_job__", "@job")
    if not marked:
        return _NONE
    return {
        str(job_name): (getattr(obj, attr), bool(mark[1]))
        for job_name, (attr, mark) in marked.items()
    }


_NONE: dict[str, Any] = {}
