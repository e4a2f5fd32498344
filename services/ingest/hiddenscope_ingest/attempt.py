"""What every attempt at an ingest job shares (the conversion in :mod:`hiddenscope_ingest.worker`,
the track change in :mod:`hiddenscope_ingest.track_attempt`, the layer shards in
:mod:`hiddenscope_ingest.shards`): the outcome it ends with, the signal that another worker
holds the job, the problem a helper's shard failed with, and how an error becomes a ``failed``
outcome. The lease, its heartbeat and the progress reports (which raise
:class:`~hiddenscope_service.workflow.Cancelled` and
:class:`~hiddenscope_service.workflow.LeaseLost`) are the job workflow's
(:class:`~hiddenscope_service.workflow.JobLease`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from celery.exceptions import SoftTimeLimitExceeded
from hiddenscope_core.errors import HiddenScopeError
from hiddenscope_core.models import DatasetManifest
from hiddenscope_service.problems import problem_from_exception

log = logging.getLogger(__name__)


class JobBusy(Exception):
    """Another live worker holds the job; retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"busy, retry after {retry_after:.1f}s")
        self.retry_after = retry_after


class ShardFailed(HiddenScopeError):
    """A helper's task failed; carries the problem it posted (status, title, detail)."""

    def __init__(self, problem: dict[str, Any]) -> None:
        super().__init__(str(problem.get("detail", "a shard of the conversion failed")))
        self.status = int(problem.get("status", 500))
        self.problem = problem


@dataclass
class Outcome:
    """How an attempt ended: the job's terminal status with its result or error."""

    status: Literal["succeeded", "failed", "cancelled"]
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


def failed_outcome(exc: Exception, job_id: str, what: str, time_limit: float) -> Outcome:
    """The ``failed`` outcome of an attempt that raised ``exc``: bad input keeps its 4xx
    problem (a helper's as it posted it), the soft time limit and anything unexpected are
    500s (the latter logged with its traceback)."""
    if isinstance(exc, ShardFailed):
        return Outcome("failed", error=exc.problem)
    if isinstance(exc, HiddenScopeError):
        return Outcome("failed", error=problem_from_exception(exc).model_dump(exclude_none=True))
    if isinstance(exc, SoftTimeLimitExceeded):
        problem: dict[str, Any] = {
            "type": "about:blank",
            "title": "Time limit exceeded",
            "status": 500,
            "detail": f"{what} ran longer than {time_limit}s",
        }
    else:
        log.exception("job %s: %s failed unexpectedly", job_id, what)
        problem = problem_from_exception(exc).model_dump(exclude_none=True)
    return Outcome("failed", error=problem)


def dataset_summary(m: DatasetManifest) -> dict[str, Any]:
    """A job's ``result.dataset``: what a client needs to find the published dataset."""
    return {
        "id": m.id,
        "name": m.name,
        "n_steps": m.n_steps,
        "n_sequences": m.n_sequences,
        "layers": [x.name for x in m.layers],
        "tracks": [x.name for x in m.tracks],
        "location": f"/v1/datasets/{m.id}",
    }
