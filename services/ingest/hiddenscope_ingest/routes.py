"""HTTP routes of the ingest service (``/v1``). HTTP only: parsing, status codes, headers;
everything else is in :mod:`hiddenscope_ingest.service`."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from hiddenscope_core.models import DatasetManifest
from hiddenscope_service.jobs import Job, Progress, new_job_id
from hiddenscope_service.problems import ProblemError, problem_responses
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hiddenscope_ingest.errors import TooLarge, UnsupportedFormat
from hiddenscope_ingest.manifest import IngestManifest, parse_manifest
from hiddenscope_ingest.service import IngestService
from hiddenscope_ingest.upload import receive_multipart

router = APIRouter(prefix="/v1")

MAX_JSON_BODY = 1 << 20
MAX_WAIT_SECONDS = 60.0


def get_service(request: Request) -> IngestService:
    service: IngestService = request.app.state.service
    return service


Service = Annotated[IngestService, Depends(get_service)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=200,
        description="retrying with the same key and body returns the original job",
    ),
]


class PathIngestRequest(BaseModel):
    """Ingest files already on the server: ``path`` must be inside a configured allowed root."""

    model_config = ConfigDict(extra="forbid")

    manifest: IngestManifest
    path: str = Field(description="server-side directory holding the files the manifest names")


class JobResource(BaseModel):
    """An async job (the status monitor of RFC 9110 §15.3.3)."""

    id: str
    kind: str
    status: str = Field(description="queued | running | succeeded | failed | cancelled")
    progress: Progress
    attempts: int
    cancel_requested: bool
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: dict[str, Any] | None = Field(
        default=None, description="on success: {dataset: {id, name, ..., location}}"
    )
    error: dict[str, Any] | None = Field(default=None, description="on failure: a problem")
    links: dict[str, str] = Field(default_factory=dict)

    @classmethod
    def of(cls, job: Job) -> JobResource:
        links = {"self": f"/v1/jobs/{job.id}"}
        if job.result and isinstance(job.result.get("dataset"), dict):
            links["dataset"] = str(job.result["dataset"].get("location", ""))
        if not job.terminal:
            links["cancel"] = f"/v1/jobs/{job.id}/cancel"
        return cls(
            id=job.id,
            kind=job.kind,
            status=job.status,
            progress=job.progress,
            attempts=job.attempts,
            cancel_requested=job.cancel_requested,
            created_at=job.created_at,
            updated_at=job.updated_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            result=job.result,
            error=job.error,
            links=links,
        )


class DatasetList(BaseModel):
    datasets: list[DatasetManifest]


def _accepted(response: Response, job: Job) -> JobResource:
    response.status_code = 202
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    response.headers["Retry-After"] = "1"
    return JobResource.of(job)


_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["manifest"],
                    "properties": {
                        "manifest": {
                            "type": "string",
                            "description": "the IngestManifest as JSON or YAML",
                        },
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "the files; each filename is the path the manifest uses",
                        },
                    },
                }
            },
            "application/json": {"schema": {"$ref": "#/components/schemas/PathIngestRequest"}},
        },
    }
}


@router.post(
    "/datasets",
    status_code=202,
    response_model=JobResource,
    summary="Upload (or name on the server) a dataset to ingest; answers with a job",
    responses=problem_responses(403, 409, 413, 415, 422, 503),
    openapi_extra=_UPLOAD_BODY,
)
async def create_dataset(
    request: Request, response: Response, service: Service, idempotency_key: IdempotencyKey = None
) -> JobResource:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        job_id = new_job_id()
        dest = service.upload_dir(job_id)
        received = await receive_multipart(request, dest, service.settings)
        try:
            manifest = parse_manifest(received.manifest)
            digest = service.request_hash(
                manifest, {k: f.sha256 for k, f in received.files.items()}, None
            )
            job = await run_in_threadpool(service.replay, idempotency_key, digest)
            if job is not None:
                await run_in_threadpool(_remove, dest)
                return _accepted(response, job)
            await run_in_threadpool(service.validate, manifest, dest, received.files)
        except BaseException:
            await run_in_threadpool(_remove, dest)
            raise
        created_job, _created = await run_in_threadpool(
            lambda: service.submit(
                manifest, dest, owned=True, job_id=job_id,
                idempotency_key=idempotency_key, request_hash=digest,
            )
        )  # fmt: skip
        return _accepted(response, created_job)
    if ctype == "application/json":
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_JSON_BODY:
            raise TooLarge("a JSON ingest request is at most 1 MiB; upload files as multipart")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_JSON_BODY:
                raise TooLarge("a JSON ingest request is at most 1 MiB")
        try:
            req = PathIngestRequest.model_validate_json(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(x) for x in first["loc"])
            raise ProblemError(422, f"{loc or 'body'}: {first['msg']}") from None
        root = await run_in_threadpool(service.resolve_server_path, req.path)
        digest = service.request_hash(req.manifest, None, str(root))
        job = await run_in_threadpool(service.replay, idempotency_key, digest)
        if job is not None:
            return _accepted(response, job)
        await run_in_threadpool(service.validate, req.manifest, root, None)
        created_job, _created = await run_in_threadpool(
            lambda: service.submit(
                req.manifest, root, owned=False, job_id=new_job_id(),
                idempotency_key=idempotency_key, request_hash=digest,
            )
        )  # fmt: skip
        return _accepted(response, created_job)
    raise UnsupportedFormat(
        "send multipart/form-data (manifest + files) or application/json ({manifest, path})"
    )


def _remove(path: Any) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


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


@router.get(
    "/jobs/{job_id}",
    response_model=JobResource,
    summary="A job's status, progress, timings and result or error",
    responses=problem_responses(404),
)
async def get_job(
    job_id: str,
    response: Response,
    service: Service,
    wait: Annotated[
        float,
        Query(ge=0, le=MAX_WAIT_SECONDS, description="wait up to this many seconds for the end"),
    ] = 0,
) -> JobResource:
    deadline = time.monotonic() + wait
    job = await run_in_threadpool(service.job, job_id)
    while not job.terminal and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        job = await run_in_threadpool(service.job, job_id)
    if not job.terminal:
        response.headers["Retry-After"] = "1"
    return JobResource.of(job)


@router.post(
    "/jobs/{job_id}/cancel",
    status_code=202,
    response_model=JobResource,
    summary="Cancel a job (a queued job at once, a running one at its next chunk)",
    responses=problem_responses(404, 409),
)
def cancel_job(job_id: str, response: Response, service: Service) -> JobResource:
    job = service.cancel(job_id)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return JobResource.of(job)


@router.delete(
    "/jobs/{job_id}",
    status_code=202,
    response_model=JobResource,
    summary="Same as POST /v1/jobs/{job_id}/cancel",
    responses=problem_responses(404, 409),
)
def delete_job(job_id: str, response: Response, service: Service) -> JobResource:
    return cancel_job(job_id, response, service)
