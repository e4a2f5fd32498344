"""The job resource both services serve at ``/v1/jobs/{id}`` (SPEC §4): the common fields, the
links, the timings, the synchronous wait (``?wait=`` or ``Prefer: wait=``) and the routes.

One resource for both kinds of job: a job id is ``{kind}-{token}``
(:func:`hiddenscope_service.jobs.new_job_id`), each service answers ``GET /v1/jobs/{id}``,
``POST /v1/jobs/{id}/cancel`` and ``DELETE /v1/jobs/{id}`` for its own jobs, and the gateway
routes ``/v1/jobs/match-*`` to the match service and every other job id to the ingest service.
A service's resource subclasses :class:`JobResourceBase` with its own ``result``; its routes are
built by :func:`job_router` from a :class:`JobBackend` (what the service knows of its jobs).
"""

# no ``from __future__ import annotations``: FastAPI reads the annotations of the endpoints that
# job_router() defines in its body, and names local to a function do not resolve from strings

import asyncio
import re
import time
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from hiddenscope_service.jobs import TERMINAL, Job, Progress
from hiddenscope_service.problems import problem_responses

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=200,
        description="retrying with the same key and body returns the original job",
    ),
]
"""The ``Idempotency-Key`` header of a request that creates a job (both services)."""

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


# ------------------------------------------------------------------------------ the routes


class JobBackend(Protocol):
    """What the job routes need of a service (its jobs of one kind)."""

    @property
    def max_wait_seconds(self) -> float:
        """The longest synchronous wait a request may ask for."""
        ...

    def job(self, job_id: str) -> Job:
        """The service's job ``job_id``; raises ``JobNotFound`` (also for another kind's)."""
        ...

    def job_status(self, job_id: str) -> str | None:
        """The job's status alone (``None`` if gone): what a wait polls."""
        ...

    def cancel(self, job_id: str) -> Job:
        """Cancel the job (``JobStateConflict`` once it has finished); returns it."""
        ...

    def render_job(self, job: Job, view: Any) -> JobResourceBase:
        """The job's resource. ``view`` is what the router's ``view`` dependency gave for a
        ``GET`` (e.g. a result page), ``None`` for the answer to a cancel."""
        ...


def _no_view() -> None:
    return None


def job_router(
    backend: Callable[[Request], JobBackend],
    resource: type[JobResourceBase],
    *,
    noun: str,
    id_description: str,
    get_summary: str,
    get_description: str,
    cancel_summary: str,
    wait_description: str = "wait up to this many seconds for the end (also `Prefer: wait=N`)",
    view: Callable[..., Any] = _no_view,
) -> APIRouter:
    """The job routes of one service under ``/v1``: ``GET /jobs/{job_id}`` (with the wait),
    ``POST /jobs/{job_id}/cancel`` and ``DELETE /jobs/{job_id}`` (the same as cancel).

    ``backend`` is a FastAPI dependency giving the service's :class:`JobBackend`; ``resource``
    the response model. ``view`` is a dependency whose parameters become extra query parameters
    of the ``GET`` (e.g. result paging); its value is handed to ``render_job``. ``noun`` names
    the endpoints (``get_{noun}``, ``cancel_{noun}``, ``delete_{noun}``: their OpenAPI
    operation ids) and the texts document them."""
    router = APIRouter(prefix="/v1")
    Backend = Annotated[JobBackend, Depends(backend)]
    JobId = Annotated[str, Path(max_length=200, description=id_description)]

    async def get_job(
        job_id: JobId,
        response: Response,
        service: Backend,
        wait: Annotated[float | None, Query(ge=0, description=wait_description)] = None,
        prefer: Annotated[str | None, Header(alias="Prefer", max_length=200)] = None,
        shown: Annotated[Any, Depends(view)] = None,
    ) -> JobResourceBase:
        job = await run_in_threadpool(service.job, job_id)
        seconds = wait_seconds(wait, prefer, service.max_wait_seconds)
        if seconds > 0 and not job.terminal:
            await wait_until_terminal(lambda: service.job_status(job_id), seconds)
            job = await run_in_threadpool(service.job, job_id)
        if not job.terminal:
            response.headers["Retry-After"] = "1"
        return await run_in_threadpool(service.render_job, job, shown)

    def cancel_job(job_id: JobId, response: Response, service: Backend) -> JobResourceBase:
        job = service.cancel(job_id)
        response.headers["Location"] = job_path(job.id)
        return service.render_job(job, None)

    router.add_api_route(
        "/jobs/{job_id}",
        get_job,
        methods=["GET"],
        name=f"get_{noun}",
        response_model=resource,
        summary=get_summary,
        description=get_description,
        responses=problem_responses(404, 422),
    )
    router.add_api_route(
        "/jobs/{job_id}/cancel",
        cancel_job,
        methods=["POST"],
        name=f"cancel_{noun}",
        status_code=202,
        response_model=resource,
        summary=cancel_summary,
        responses=problem_responses(404, 409),
    )
    router.add_api_route(
        "/jobs/{job_id}",
        cancel_job,
        methods=["DELETE"],
        name=f"delete_{noun}",
        status_code=202,
        response_model=resource,
        summary="Same as POST /v1/jobs/{job_id}/cancel",
        responses=problem_responses(404, 409),
    )
    return router
