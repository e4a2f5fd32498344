"""HTTP routes that change a published dataset's tracks (each change is a new version;
:mod:`hiddenscope_ingest.versions`). HTTP only: parsing, status codes, headers."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.concurrency import run_in_threadpool
from hiddenscope_core.models import NAME_PATTERN
from hiddenscope_service.jobs import new_job_id
from hiddenscope_service.problems import problem_responses
from pydantic import BaseModel, ConfigDict, Field

from hiddenscope_ingest.errors import UnsupportedFormat
from hiddenscope_ingest.manifest import TracksManifest, parse_tracks_manifest
from hiddenscope_ingest.routes import (
    IdempotencyKey,
    JobResource,
    _accepted,
    _remove,
    read_json_body,
    upload_body,
)
from hiddenscope_ingest.service import JOB_KIND
from hiddenscope_ingest.upload import receive_multipart
from hiddenscope_ingest.versions import VersionsService

router = APIRouter(prefix="/v1")


def get_versions(request: Request) -> VersionsService:
    versions: VersionsService = request.app.state.versions
    return versions


Versions = Annotated[VersionsService, Depends(get_versions)]
DatasetRef = Annotated[
    str,
    Path(
        max_length=200,
        description="the dataset's name (its current version), or the id of its current "
        "version (then 409 if another change publishes first)",
    ),
]


class PathTracksRequest(BaseModel):
    """Add tracks from files already on the server: ``path`` must be inside an allowed root."""

    model_config = ConfigDict(extra="forbid")

    manifest: TracksManifest
    path: str = Field(description="server-side directory holding the files the manifest names")


@router.post(
    "/datasets/{name_or_id}/tracks",
    status_code=202,
    response_model=JobResource,
    summary="Add meta tracks to a published dataset (a new version); answers with a job",
    description="The same track specs as at ingest (`tracks`, `bed`, `conll`; `remove` to drop "
    "or replace tracks in the same version). The job's `result.dataset` names the new version "
    "(`id`, `version`, `parent_id`); the name points at it once the job succeeded. 404 unknown "
    "dataset, 409 a track name it already has (or a superseded version's id), 422 bad lengths, "
    "labels or ids.",
    responses=problem_responses(403, 404, 409, 413, 415, 422, 503),
    openapi_extra=upload_body("TracksManifest", "PathTracksRequest"),
)
async def add_tracks(
    name_or_id: DatasetRef,
    request: Request,
    response: Response,
    versions: Versions,
    idempotency_key: IdempotencyKey = None,
) -> JobResource:
    settings = versions.settings
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        if not idempotency_key:  # 404/409 before the upload (a retry may replay its job)
            await run_in_threadpool(versions.target, name_or_id)
        job_id = new_job_id(JOB_KIND)
        dest = versions.ingest.upload_dir(job_id)
        received = await receive_multipart(request, dest, settings)
        try:
            manifest = parse_tracks_manifest(received.manifest)
            digest = versions.request_hash(
                name_or_id, manifest, {k: f.sha256 for k, f in received.files.items()}, None
            )
            job = await run_in_threadpool(versions.replay, idempotency_key, digest)
            if job is not None:
                await run_in_threadpool(_remove, dest)
                return _accepted(response, job)
            ds = await run_in_threadpool(versions.target, name_or_id)
            await run_in_threadpool(versions.validate, ds, manifest, dest, received.files)
        except BaseException:
            await run_in_threadpool(_remove, dest)
            raise
        created, _new = await run_in_threadpool(
            lambda: versions.submit(
                name_or_id, manifest, dest, owned=True, job_id=job_id,
                idempotency_key=idempotency_key, request_hash=digest,
            )
        )  # fmt: skip
        return _accepted(response, created)
    if ctype == "application/json":
        req = await read_json_body(request, PathTracksRequest)
        root = await run_in_threadpool(versions.ingest.resolve_server_path, req.path)
        digest = versions.request_hash(name_or_id, req.manifest, None, str(root))
        job = await run_in_threadpool(versions.replay, idempotency_key, digest)
        if job is not None:
            return _accepted(response, job)
        ds = await run_in_threadpool(versions.target, name_or_id)
        await run_in_threadpool(versions.validate, ds, req.manifest, root, None)
        created, _new = await run_in_threadpool(
            lambda: versions.submit(
                name_or_id, req.manifest, root, owned=False, job_id=new_job_id(JOB_KIND),
                idempotency_key=idempotency_key, request_hash=digest,
            )
        )  # fmt: skip
        return _accepted(response, created)
    raise UnsupportedFormat(
        "send multipart/form-data (manifest + files) or application/json ({manifest, path})"
    )


@router.delete(
    "/datasets/{name_or_id}/tracks/{track}",
    status_code=202,
    response_model=JobResource,
    summary="Remove a meta track from a published dataset (a new version); answers with a job",
    responses=problem_responses(404, 409, 422, 503),
)
def remove_track(
    name_or_id: DatasetRef,
    track: Annotated[str, Path(pattern=NAME_PATTERN, description="the track to remove")],
    response: Response,
    versions: Versions,
    idempotency_key: IdempotencyKey = None,
) -> JobResource:
    manifest = TracksManifest(remove=[track])
    digest = versions.request_hash(name_or_id, manifest, None, None)
    job = versions.replay(idempotency_key, digest)
    if job is not None:
        return _accepted(response, job)
    ds = versions.target(name_or_id)
    versions.validate(ds, manifest, None, None)
    created, _new = versions.submit(
        name_or_id,
        manifest,
        None,
        owned=False,
        job_id=new_job_id(JOB_KIND),
        idempotency_key=idempotency_key,
        request_hash=digest,
    )
    return _accepted(response, created)
