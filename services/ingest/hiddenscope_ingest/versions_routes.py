"""HTTP routes that change a published dataset's tracks (each change is a new version;
:mod:`hiddenscope_ingest.track_submission`). HTTP only: parsing, status codes, headers."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.concurrency import run_in_threadpool
from hiddenscope_core.models import NAME_PATTERN
from hiddenscope_service.job_resource import IdempotencyKey
from hiddenscope_service.problems import problem_responses
from pydantic import BaseModel, ConfigDict, Field

from hiddenscope_ingest.manifest import TracksManifest
from hiddenscope_ingest.route_parts import (
    JobResource,
    accepted,
    read_json_body,
    upload_body,
    upload_kind,
)
from hiddenscope_ingest.track_submission import VersionsService
from hiddenscope_ingest.upload import receive_multipart

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
    if upload_kind(request) == "multipart":
        if not idempotency_key:  # 404/409 before the upload (a retry may replay its job)
            await run_in_threadpool(versions.target, name_or_id)
        job_id, dest = versions.new_upload()
        received = await receive_multipart(request, dest, versions.settings)
        job = await run_in_threadpool(
            versions.submit_upload, name_or_id, job_id, received, idempotency_key
        )
        return accepted(response, job)
    req = await read_json_body(request, PathTracksRequest)
    job = await run_in_threadpool(
        versions.submit_path, name_or_id, req.manifest, req.path, idempotency_key
    )
    return accepted(response, job)


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
    return accepted(response, versions.submit_removal(name_or_id, track, idempotency_key))
