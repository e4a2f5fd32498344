"""HTTP routes of the ingest service (``/v1``). HTTP only: parsing, status codes, headers;
everything else is in :mod:`hiddenscope_ingest.service`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from hiddenscope_core.models import DatasetManifest
from hiddenscope_service.job_resource import (
    JobResourceBase,
    job_path,
    wait_seconds,
    wait_until_terminal,
)
from hiddenscope_service.jobs import Job, new_job_id
from hiddenscope_service.problems import ProblemError, problem_responses
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hiddenscope_ingest.errors import TooLarge, UnsupportedFormat
from hiddenscope_ingest.manifest import IngestManifest, parse_manifest
from hiddenscope_ingest.service import JOB_KIND, IngestService
from hiddenscope_ingest.upload import receive_multipart

M = TypeVar("M", bound=BaseModel)

router = APIRouter(prefix="/v1")

MAX_JSON_BODY = 1 << 20


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


class ShardProgress(BaseModel):
    phase: str = Field(description="write (Parquet parts, values) | index (on-planes)")
    done: int = Field(description="layer shards of this phase done")
    total: int = Field(description="layer shards of this phase (layers x shards)")


class JobResource(JobResourceBase):
    """An ingest job at ``/v1/jobs/{id}`` (the job resource both services share; ids
    ``ingest-…``); ``progress`` counts steps of the input arrays converted (a layer counts
    twice: written, then indexed), ``attempts`` worker claims."""

    result: dict[str, Any] | None = Field(
        default=None, description="on success: {dataset: {id, name, ..., location}}"
    )
    steps_per_second: float | None = Field(
        default=None, description="progress.done per second of running (null before it runs)"
    )
    shards: ShardProgress | None = Field(
        default=None, description="the layer shards of the current (or last) phase"
    )

    @classmethod
    def of(cls, job: Job, shards: str | None = None) -> JobResource:
        base = cls.common(job)
        if job.result and isinstance(job.result.get("dataset"), dict):
            base["links"]["dataset"] = str(job.result["dataset"].get("location", ""))
        rate = None
        if job.started_at is not None and job.progress.done:
            end = job.finished_at or datetime.now(UTC)
            elapsed = (end - job.started_at).total_seconds()
            rate = round(job.progress.done / elapsed, 1) if elapsed > 0 else None
        shard_progress = ShardProgress.model_validate_json(shards) if shards else None
        return cls(**base, result=job.result, steps_per_second=rate, shards=shard_progress)


class DatasetList(BaseModel):
    datasets: list[DatasetManifest]


async def read_json_body(request: Request, model: type[M]) -> M:
    """A JSON request body of at most ``MAX_JSON_BODY`` bytes (413 beyond, also when it comes
    without a Content-Length), validated as ``model`` (422 naming the first wrong field)."""
    length = request.headers.get("content-length")
    too_large = "a JSON request is at most 1 MiB; upload files as multipart"
    if length is not None and length.isdigit() and int(length) > MAX_JSON_BODY:
        raise TooLarge(too_large)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BODY:
            raise TooLarge(too_large)
    try:
        return model.model_validate_json(bytes(body))
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise ProblemError(422, f"{loc or 'body'}: {first['msg']}") from None


def _accepted(response: Response, job: Job) -> JobResource:
    response.status_code = 202
    response.headers["Location"] = job_path(job.id)
    response.headers["Retry-After"] = "1"
    return JobResource.of(job)


def upload_body(manifest_schema: str, path_request_schema: str) -> dict[str, Any]:
    """The OpenAPI request body of an upload: multipart (the manifest as JSON or YAML plus the
    files it names) or JSON naming a server-side directory."""
    return {
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
                                "description": f"the {manifest_schema} as JSON or YAML",
                            },
                            "files": {
                                "type": "array",
                                "items": {"type": "string", "format": "binary"},
                                "description": "the files; each filename is the path the "
                                "manifest uses",
                            },
                        },
                    }
                },
                "application/json": {
                    "schema": {"$ref": f"#/components/schemas/{path_request_schema}"}
                },
            },
        }
    }


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
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        job_id = new_job_id(JOB_KIND)
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
        req = await read_json_body(request, PathIngestRequest)
        root = await run_in_threadpool(service.resolve_server_path, req.path)
        digest = service.request_hash(req.manifest, None, str(root))
        job = await run_in_threadpool(service.replay, idempotency_key, digest)
        if job is not None:
            return _accepted(response, job)
        await run_in_threadpool(service.validate, req.manifest, root, None)
        created_job, _created = await run_in_threadpool(
            lambda: service.submit(
                req.manifest, root, owned=False, job_id=new_job_id(JOB_KIND),
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


JobId = Annotated[str, Path(max_length=200, description="an ingest job id (ingest-…)")]


@router.get(
    "/jobs/{job_id}",
    response_model=JobResource,
    summary="A job's status, progress, timings and result or error",
    description="The job resource both services share: the gateway sends ids `match-…` to the "
    "match service and every other id here.",
    responses=problem_responses(404, 422),
)
async def get_job(
    job_id: JobId,
    response: Response,
    service: Service,
    wait: Annotated[
        float | None,
        Query(
            ge=0,
            description="wait up to this many seconds for the end (also `Prefer: wait=N`; at "
            "most MAX_WAIT_SECONDS)",
        ),
    ] = None,
    prefer: Annotated[str | None, Header(alias="Prefer", max_length=200)] = None,
) -> JobResource:
    job = await run_in_threadpool(service.job, job_id)
    seconds = wait_seconds(wait, prefer, service.settings.max_wait_seconds)
    if seconds > 0 and not job.terminal:
        await wait_until_terminal(lambda: service.store.status(job_id), seconds)
        job = await run_in_threadpool(service.job, job_id)
    if not job.terminal:
        response.headers["Retry-After"] = "1"
    shards = await run_in_threadpool(service.store.get_note, job_id, "shards")
    return JobResource.of(job, shards)


@router.post(
    "/jobs/{job_id}/cancel",
    status_code=202,
    response_model=JobResource,
    summary="Cancel a job (a queued job at once, a running one at its next chunk)",
    responses=problem_responses(404, 409),
)
def cancel_job(job_id: JobId, response: Response, service: Service) -> JobResource:
    job = service.cancel(job_id)
    response.headers["Location"] = job_path(job.id)
    return JobResource.of(job)


@router.delete(
    "/jobs/{job_id}",
    status_code=202,
    response_model=JobResource,
    summary="Same as POST /v1/jobs/{job_id}/cancel",
    responses=problem_responses(404, 409),
)
def delete_job(job_id: JobId, response: Response, service: Service) -> JobResource:
    return cancel_job(job_id, response, service)
