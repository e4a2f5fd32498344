"""HTTP routes of the ingest service's datasets and jobs (``/v1``). HTTP only: parsing, status
codes, headers; everything else is in :mod:`hiddenscope_ingest.submission`. The job routes are
the shared ones (:func:`hiddenscope_service.job_resource.job_router`) over :class:`IngestJobs`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from hiddenscope_core.models import DatasetManifest
from hiddenscope_service.job_resource import IdempotencyKey, JobBackend, job_router
from hiddenscope_service.jobs import Job
from hiddenscope_service.problems import problem_responses
from pydantic import BaseModel, ConfigDict, Field

from hiddenscope_ingest.manifest import IngestManifest
from hiddenscope_ingest.route_parts import (
    JobResource,
    accepted,
    read_json_body,
    upload_body,
    upload_kind,
)
from hiddenscope_ingest.submission import IngestService
from hiddenscope_ingest.upload import receive_multipart

router = APIRouter(prefix="/v1")


def get_service(request: Request) -> IngestService:
    service: IngestService = request.app.state.service
    return service


Service = Annotated[IngestService, Depends(get_service)]


class PathIngestRequest(BaseModel):
    """Ingest files already on the server: ``path`` must be inside a configured allowed root."""

    model_config = ConfigDict(extra="forbid")

    manifest: IngestManifest
    path: str = Field(description="server-side directory holding the files the manifest names")


class DatasetList(BaseModel):
    datasets: list[DatasetManifest]


@router.post(
    "/datasets",
    status_code=202,
    response_model=JobResource,
    summary="Upload (or name on the server) a dataset to ingest; answers with a job",
    responses=problem_responses(403, 409, 413, 415, 422, 503),
    openapi_extra=upload_body("IngestManifest", "PathIngestRequest"),
)
async def create_dataset(
    request: Request, response: Response, service: Service, idempotency_key: IdempotencyKey = None
) -> JobResource:
    if upload_kind(request) == "multipart":
        job_id, dest = service.new_upload()
        received = await receive_multipart(request, dest, service.settings)
        job = await run_in_threadpool(service.submit_upload, job_id, received, idempotency_key)
        return accepted(response, job)
    req = await read_json_body(request, PathIngestRequest)
    job = await run_in_threadpool(service.submit_path, req.manifest, req.path, idempotency_key)
    return accepted(response, job)


@router.get("/datasets", response_model=DatasetList, summary="List published datasets")
def list_datasets(service: Service) -> DatasetList:
    return DatasetList(datasets=service.list_datasets())


@router.get(
    "/datasets/{name_or_id}",
    response_model=DatasetManifest,
    summary="A published dataset's manifest, by name or id",
    responses=problem_responses(404),
)
def get_dataset(name_or_id: str, service: Service) -> DatasetManifest:
    return service.get_dataset(name_or_id)


@router.delete(
    "/datasets/{name_or_id}",
    status_code=204,
    summary="Unpublish and remove a dataset",
    responses=problem_responses(404),
)
def delete_dataset(name_or_id: str, service: Service) -> Response:
    service.delete_dataset(name_or_id)
    return Response(status_code=204)


@dataclass
class IngestJobs:
    """The ingest jobs as the shared job routes see them (a
    :class:`~hiddenscope_service.job_resource.JobBackend`): a ``GET`` shows the layer shards of
    the current phase, the answer to a cancel does not."""

    service: IngestService

    @property
    def max_wait_seconds(self) -> float:
        return self.service.settings.max_wait_seconds

    def job(self, job_id: str) -> Job:
        return self.service.job(job_id)

    def job_status(self, job_id: str) -> str | None:
        return self.service.status(job_id)

    def cancel(self, job_id: str) -> Job:
        return self.service.cancel(job_id)

    def render_job(self, job: Job, view: bool | None) -> JobResource:
        return JobResource.of(job, self.service.shard_progress(job.id) if view else None)


def get_jobs(request: Request) -> JobBackend:
    return IngestJobs(get_service(request))


def _full_view() -> bool:
    return True


job_routes = job_router(
    get_jobs,
    JobResource,
    noun="job",
    id_description="an ingest job id (ingest-…)",
    get_summary="A job's status, progress, timings and result or error",
    get_description="The job resource both services share: the gateway sends ids `match-…` to "
    "the match service and every other id here.",
    cancel_summary="Cancel a job (a queued job at once, a running one at its next chunk)",
    wait_description="wait up to this many seconds for the end (also `Prefer: wait=N`; at most "
    "MAX_WAIT_SECONDS)",
    view=_full_view,
)
