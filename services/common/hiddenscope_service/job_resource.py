"""The job resource both services serve at ``/v1/jobs/{id}`` (SPEC §4): the common fields, the
links, the timings and the synchronous wait (``?wait=`` or ``Prefer: wait=``).

One resource for both kinds of job: a job id is ``{kind}-{token}``
(:func:`hiddenscope_service.jobs.new_job_id`), each service answers ``GET /v1/jobs/{id}``,
``POST /v1/jobs/{id}/cancel`` and ``DELETE /v1/jobs/{id}`` for its own jobs, and the gateway
routes ``/v1/jobs/match-*`` to the match service and every other job id to the ingest service.
A service's resource subclasses :class:`JobResourceBase` with its own ``result``.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from hiddenscope_service.jobs import TERMINAL, Job, Progress

JOBS_PATH = "/v1/jobs"


def job_path(job_id: str) -> str:
    """The job's resource path (its ``Location``)."""
    return f"{JOBS_PATH}/{job_id}"


class Timings(BaseModel):
    queued_seconds: float | None = Field(
        default=None, description="created → started (the first worker took it)"
    )
    running_seconds: float | None = Field(default=None, description="started → finished")
    total_seconds: float | None = Field(default=None, description="created → finished")


def timings_of(job: Job) -> Timings:
    t = Timings()
    if job.started_at is not None:
        t.queued_seconds = max(0.0, (job.started_at - job.created_at).total_seconds())
    if job.finished_at is not None:
        t.total_seconds = max(0.0, (job.finished_at - job.created_at).total_seconds())
        if job.started_at is not None:
            t.running_seconds = max(0.0, (job.finished_at - job.started_at).total_seconds())
    return t


class JobResourceBase(BaseModel):
    """An async job (the status monitor of RFC 9110 §15.3.3); services add ``result``."""

    id: str = Field(description="`{kind}-{token}`: unguessable (128 random bits)")
    kind: str = Field(description="the service that runs the job: ingest | match")
    status: str = Field(description="queued | running | succeeded | failed | cancelled")
    progress: Progress
    attempts: int = Field(description="how many times workers started (parts of) the job")
    cancel_requested: bool
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    timings: Timings
    error: dict[str, Any] | None = Field(default=None, description="on failure: a problem")
    links: dict[str, str] = Field(
        default_factory=dict, description="self; cancel while not finished; service extras"
    )

    @staticmethod
    def common(job: Job) -> dict[str, Any]:
        """The base fields of ``job`` (``links`` has ``self`` and, unfinished, ``cancel``)."""
        links = {"self": job_path(job.id)}
        if not job.terminal:
            links["cancel"] = job_path(job.id) + "/cancel"
        return {
            "id": job.id,
            "kind": job.kind,
            "status": job.status,
            "progress": job.progress,
            "attempts": job.attempts,
            "cancel_requested": job.cancel_requested,
            "created_at": job.created_at,
            "updated_at": job.updated_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
            "timings": timings_of(job),
            "error": job.error,
            "links": links,
        }


_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d+(?:\.\d+)?)")


def wait_seconds(wait: float | None, prefer: str | None, cap: float) -> float:
    """How long to wait for the end: the larger of ``?wait=`` and ``Prefer: wait=N``
    (RFC 7240), at most ``cap`` (the service's ``max_wait_seconds``)."""
    seconds = wait or 0.0
    if prefer:
        m = _PREFER_WAIT.search(prefer)
        if m:
            seconds = max(seconds, float(m.group(1)))
    return min(seconds, cap)


async def wait_until_terminal(status_of: Callable[[], str | None], seconds: float) -> None:
    """Poll ``status_of()`` (a blocking Redis read, run in the thread pool) until it is terminal
    or ``None`` (gone), for at most ``seconds``; the poll interval grows from 2 to 50 ms."""
    deadline = time.monotonic() + seconds
    delay = 0.002
    while time.monotonic() < deadline:
        status = await run_in_threadpool(status_of)
        if status is None or status in TERMINAL:
            return
        await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 1.5, 0.05)
