"""The worker side of an ingest job: :func:`run_conversion` claims the job's lease, runs one
attempt (a conversion, or a track change: :mod:`hiddenscope_ingest.track_attempt`) and records
its outcome. The Celery tasks (:mod:`hiddenscope_ingest.tasks`) are thin wrappers around it.

A conversion attempt is idempotent: it starts from an empty work directory, removes the staging
directory an earlier attempt left, and recognises a dataset that an earlier attempt already
published.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from hiddenscope_core.build import remove_build_dir
from hiddenscope_service.jobs import Job, JobStore
from hiddenscope_service.workflow import Cancelled, JobLease, LeaseLost

from hiddenscope_ingest.attempt import JobBusy, Outcome, dataset_summary, failed_outcome
from hiddenscope_ingest.catalog import DatasetCatalog
from hiddenscope_ingest.convert import convert
from hiddenscope_ingest.loaders import resolve_file
from hiddenscope_ingest.loaders.archives import extract_archive
from hiddenscope_ingest.manifest import IngestManifest
from hiddenscope_ingest.plan import build_plan
from hiddenscope_ingest.settings import IngestSettings
from hiddenscope_ingest.shards import SpawnHelpers, shard_runner
from hiddenscope_ingest.tasknames import TRACKS_OP
from hiddenscope_ingest.track_attempt import attempt_tracks

log = logging.getLogger(__name__)

Attempt = Callable[[Job, JobLease, IngestSettings, Path, Path, SpawnHelpers | None], Outcome]
"""``attempt(job, lease, settings, source_dir, work, spawn_helpers)``: one attempt at a job
under its lease (a conversion or a track change)."""


def run_conversion(
    job_id: str,
    owner: str,
    settings: IngestSettings,
    store: JobStore,
    spawn_helpers: SpawnHelpers | None = None,
) -> str:
    """One attempt at job ``job_id``; returns the job's status afterwards. The layer shards
    are shared with helper tasks that ``spawn_helpers(build_id, phase, n)`` enqueues
    (:mod:`hiddenscope_ingest.shards`); without it this worker runs them all.

    Raises :class:`JobBusy` when another live worker holds the job (the task retries later).
    Every other outcome is recorded in the job store (bad input → ``failed`` with a 4xx problem).

    Order at the end of an attempt: the outcome is noted on the job (``note:outcome``), the work
    and upload directories are removed, and only then does the job become terminal. So a client
    that sees a terminal job never sees its upload still on disk (the race the error tests hit
    when the removal came after the transition), and an attempt that dies between the removal
    and the transition is finished by the next delivery from the note (its upload is gone).
    """
    lease = JobLease.claim(store, job_id, owner, settings.lease_seconds)
    if lease.outcome == "busy":
        raise JobBusy(lease.retry_after)
    job = store.get(job_id)
    source_dir = Path(job.payload["source_dir"])
    owned = bool(job.payload.get("owned"))
    work = settings.layout.work(job_id)
    if not lease.held:
        _cleanup(work, source_dir if owned else None)
        return lease.status
    noted = lease.get_note("outcome")
    if noted:
        outcome = Outcome(**json.loads(noted))
    else:
        try:
            # the heartbeat keeps the lease live through long steps without progress reports
            # (the index build in publish()), so it expires only when the process dies
            with lease.heartbeat():
                attempt = _attempt_of(job)
                outcome = attempt(job, lease, settings, source_dir, work, spawn_helpers)
        except LeaseLost:
            log.warning("job %s: lease lost; another worker took over", job_id)
            return store.get(job_id).status
        lease.set_note("outcome", json.dumps(outcome.__dict__))
    _cleanup(work, source_dir if owned else None)
    if not lease.finish(outcome.status, result=outcome.result, error=outcome.error):
        log.warning("job %s: lease lost before it could be finished", job_id)
    return store.get(job_id).status


def _attempt_of(job: Job) -> Attempt:
    """The attempt function of ``job``: a conversion, or a change of a published dataset's
    tracks (payload ``op: tracks``), so that whichever task delivers the job (``ingest.tracks``,
    or ``ingest.convert`` from the reconciler) runs it."""
    if job.payload.get("op") == TRACKS_OP:
        return attempt_tracks
    return attempt_conversion


def _cleanup(work: Path, upload: Path | None) -> None:
    shutil.rmtree(work, ignore_errors=True)
    if upload is not None:
        shutil.rmtree(upload, ignore_errors=True)


def attempt_conversion(
    job: Job,
    lease: JobLease,
    settings: IngestSettings,
    source_dir: Path,
    work: Path,
    spawn_helpers: SpawnHelpers | None = None,
) -> Outcome:
    """One attempt at converting a job's upload into a published dataset (called by
    :func:`run_conversion` under the job's lease)."""
    job_id = job.id
    manifest = IngestManifest.model_validate(job.payload["manifest"])
    layout = settings.layout
    # an earlier attempt's leftovers: its staging directory, and maybe a finished publication
    old_staging = lease.get_note("staging_id")
    if old_staging:
        remove_build_dir(layout.root, layout.staging(old_staging))
    published = DatasetCatalog(layout).find_by_job(manifest.name, job_id)
    if published is not None:
        return Outcome("succeeded", result={"dataset": dataset_summary(published)})
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    progress = lease.progress()

    try:
        root = source_dir
        if manifest.archive is not None:
            root = work / "extracted"
            extract_archive(resolve_file(source_dir, manifest.archive), root, settings.limits)
        progress(0, 0)
        plan = build_plan(manifest, root, settings.limits, work_dir=work)
        try:
            result = convert(
                plan,
                layout.root,
                on_created=lambda w: lease.set_note("staging_id", w.id),
                chunk_bytes=settings.chunk_bytes,
                progress=progress,
                provenance={"job_id": job_id},
                shard_steps=settings.shard_steps,
                part_steps=settings.part_steps,
                run_shards=shard_runner(lease, settings, spawn_helpers),
            )
        finally:
            plan.close()
    except Cancelled:
        return Outcome("cancelled")
    except LeaseLost:
        raise
    except Exception as exc:
        return failed_outcome(exc, job_id, "the conversion", settings.task_time_limit)
    return Outcome("succeeded", result={"dataset": dataset_summary(result)})
