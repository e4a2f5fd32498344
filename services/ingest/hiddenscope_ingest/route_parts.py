"""HTTP pieces both route modules of the ingest service share (:mod:`hiddenscope_ingest.routes`,
:mod:`hiddenscope_ingest.versions_routes`): the job resource, the
``202 Accepted`` answer, a size-capped JSON body and the OpenAPI body of an upload."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from fastapi import Request, Response
from hiddenscope_service.job_resource import JobResourceBase, job_path
from hiddenscope_service.jobs import Job
from hiddenscope_service.problems import ProblemError
from pydantic import BaseModel, Field, ValidationError

from hiddenscope_ingest.errors import TooLarge, UnsupportedFormat

M = TypeVar("M", bound=BaseModel)

MAX_JSON_BODY = 1 << 20


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


def accepted(response: Response, job: Job) -> JobResource:
    """Answer ``202 Accepted`` with ``job`` and where to poll it."""
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


def upload_kind(request: Request) -> Literal["multipart", "json"]:
    """How an upload comes: multipart (manifest + files) or JSON naming a server directory;
    415 for any other body."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        return "multipart"
    if ctype == "application/json":
        return "json"
    raise UnsupportedFormat(
        "send multipart/form-data (manifest + files) or application/json ({manifest, path})"
    )
