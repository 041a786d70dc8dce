"""Jobs: a request to another worker (local or remote), answered with updates, a stream and a
final response.

- :mod:`.params`: what a job is asked with (:class:`JobParams`, :class:`JobGroupParams`), what
  its reader sees (:class:`JobEvent`, :class:`JobGroupEvent`, :class:`JobGroupResponse`) and
  the ``@job`` decorator of serving methods.
- :mod:`.group`: the requester's view of a job sent to one or more workers (:class:`JobGroup`)
  and its ``async with`` forms (:class:`JobContext`, :class:`JobGroupContext`).
- :mod:`.requesting` / :mod:`.serving`: the state of the two halves a worker holds.
- :mod:`.worker_jobs`: :class:`~.worker_jobs.WorkerJobs`, the job methods, hooks and message
  handling a worker inherits (``job()``, ``send_job_response()``, ``on_job_completed``...).
"""

from .group import DEFAULT_JOB_EVENT_BUFFER, JobContext, JobGroup, JobGroupContext
from .params import (
    JobEvent,
    JobGroupEvent,
    JobGroupParams,
    JobGroupResponse,
    JobParams,
    JobStatus,
    job,
    resolve_job_params,
)

__all__ = [
    "DEFAULT_JOB_EVENT_BUFFER",
    "JobContext",
    "JobEvent",
    "JobGroup",
    "JobGroupContext",
    "JobGroupEvent",
    "JobGroupParams",
    "JobGroupResponse",
    "JobParams",
    "JobStatus",
    "job",
    "resolve_job_params",
]
