"""What both kinds of submission (a conversion: :mod:`hiddenscope_ingest.submission`, a track
change: :mod:`hiddenscope_ingest.track_submission`) do the same way on the API side: resolve a
server-side directory, check the files a manifest names, run the deep check, replay an earlier
identical request, and create the job and enqueue it.

Order of durability (``STYLE.md``): the upload is on disk and fsynced, then the job exists in
Redis, then the task is enqueued with only the job id.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from hiddenscope_service.jobs import Job, JobStore
from hiddenscope_service.problems import ProblemError

from hiddenscope_ingest.errors import InvalidData, InvalidManifest, PathForbidden
from hiddenscope_ingest.loaders import detect_format, resolve_file
from hiddenscope_ingest.sandbox import check_in_sandbox, deep_check
from hiddenscope_ingest.settings import IngestSettings
from hiddenscope_ingest.tasknames import JOB_KIND
from hiddenscope_ingest.upload import ReceivedFile

log = logging.getLogger(__name__)

TEXT_FORMATS = frozenset({"text", "dict", "fasta", "bed"})
"""Formats parsed completely before the 202 when all of them together are small enough."""

Enqueue = Callable[[str], None]
"""``enqueue(job_id)``: send the job's task to the queue."""


def text_bytes(referenced: Iterable[str], source_dir: Path) -> int:
    """The size of the text inputs among ``referenced`` (files under ``source_dir``)."""
    return sum(
        resolve_file(source_dir, rel).stat().st_size
        for rel in referenced
        if detect_format(rel) in TEXT_FORMATS
    )


def resolve_server_path(settings: IngestSettings, path: str) -> Path:
    """A server-side directory under one of ``allowed_roots`` (symlinks resolved), else 403."""
    try:
        real = Path(path).resolve(strict=True)
    except (OSError, RuntimeError):
        real = None
    roots = [r.resolve() for r in settings.allowed_roots]
    if real is None or not any(real.is_relative_to(r) for r in roots):
        # the same answer whether or not the path exists: no probing outside the roots
        raise PathForbidden(
            f"{path!r} is not inside an allowed server directory"
            + ("" if roots else " (none are configured: HIDDENSCOPE_INGEST_ALLOWED_ROOTS)")
        )
    if not real.is_dir():
        raise InvalidManifest(f"{path!r} is not a directory")
    return real


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def check_files(
    referenced: Iterable[str],
    checksums: Mapping[str, str],
    source_dir: Path,
    received: dict[str, ReceivedFile] | None,
) -> None:
    """Every file a manifest names is there (in the upload, or under the server directory) and
    matches its optional sha256. Raises 4xx errors."""
    for rel in referenced:
        if received is not None and rel not in received:
            raise InvalidManifest(f"the manifest names {rel!r}, which is not in the upload")
        resolve_file(source_dir, rel)
    for rel, expected in checksums.items():
        if received is not None:
            if rel not in received:
                raise InvalidManifest(f"a checksum is given for {rel!r}, which was not sent")
            actual = received[rel].sha256
        else:
            actual = _sha256_file(resolve_file(source_dir, rel))
        if actual != expected:
            raise InvalidData(
                f"{rel}: sha256 mismatch (expected {expected}, received {actual}); "
                "the file was damaged in transit or the checksum is wrong"
            )


def run_deep_check(settings: IngestSettings, job: dict[str, Any]) -> None:
    """The deep check of ``job`` (:func:`hiddenscope_ingest.sandbox.deep_check`) with the
    sandbox's limits: in a resource-limited child, or in-process when ``sandbox`` is off."""
    job = {
        **job,
        "limits": dataclasses.asdict(settings.limits),
        "memory_bytes": settings.sandbox_memory_bytes,
        "cpu_seconds": settings.sandbox_cpu_seconds,
    }
    if settings.sandbox:
        check_in_sandbox(job, timeout=settings.sandbox_timeout_seconds)
    else:
        deep_check(job)


def replay(
    store: JobStore, enqueue: Enqueue, idempotency_key: str | None, request_hash: str
) -> Job | None:
    """The job of an earlier identical request (re-enqueued if still queued), or None."""
    if not idempotency_key:
        return None
    job = store.lookup_idempotent(idempotency_key, request_hash)
    if job is not None and job.status == "queued":
        enqueue(job.id)  # harmless if it was enqueued already: attempts are idempotent
    return job


def create_job(
    store: JobStore,
    enqueue: Enqueue,
    payload: dict[str, Any],
    *,
    upload: Path | None,
    job_id: str,
    idempotency_key: str | None,
    request_hash: str,
) -> tuple[Job, bool]:
    """Create the job and enqueue it; ``(job, created)``. ``upload``: the job's own upload,
    removed here when the job already existed or the queue is unavailable (503)."""
    job, created = store.create(
        JOB_KIND,
        payload,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        job_id=job_id,
    )
    if not created:
        if upload is not None:
            shutil.rmtree(upload, ignore_errors=True)
        return job, False
    try:
        enqueue(job.id)
    except Exception as exc:
        log.exception("enqueueing job %s failed", job.id)
        problem = ProblemError(503, "the job queue is unavailable; retry later")
        store.fail(job.id, problem.to_problem().model_dump(exclude_none=True))
        if upload is not None:
            shutil.rmtree(upload, ignore_errors=True)
        raise problem from exc
    return job, True
