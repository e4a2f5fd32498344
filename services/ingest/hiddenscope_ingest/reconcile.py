"""The reconciler: puts jobs that fell through the cracks back on the queue and removes what dead
attempts left on disk. Redis and the broker are not a system of record (a lost message, a
Redis restart without AOF, a worker killed between claim and ack), so the job store is
compared with the queue and the disk periodically — without ``celery beat``:

* the API runs one pass at startup and then every ``reconcile_interval_seconds`` (a lock,
  :class:`~hiddenscope_service.workflow.Lock`, makes concurrent API replicas take turns);
* the Celery task ``hiddenscope_ingest.reconcile`` runs one pass (e.g. from cron via
  ``celery call``);
* the CLI ``python -m hiddenscope_ingest.reconcile [--dry-run]`` runs one pass.

One pass:

1. a ``queued`` job not updated for ``requeue_after_seconds``, and a ``running`` job whose lease
   expired (its worker died: a live worker renews its lease every ``lease_seconds / 3`` with a
   heartbeat, also during the index build), is enqueued again — at most once per
   ``requeue_after_seconds`` (note ``requeued_at``). Harmless if the old message still exists:
   a delivery of a job that is held or finished does nothing (``JobStore.claim``); a takeover
   counts as an attempt (poison cap ``max_attempts``).
2. ``staging/<id>`` directories that no unfinished job owns (note ``staging_id``) and in which
   nothing changed for ``leftover_after_seconds`` are removed (an attempt that died mid-write),
   and so is what an abort left in ``trash/`` (a helper was still writing into the build);
3. ``uploads/<job>`` and ``uploads/<job>.work`` of jobs that are finished or unknown (expired),
   unchanged for ``leftover_after_seconds``, are removed (uploads still being received have no
   job yet, but they change all the time);
4. dataset versions that no name points at any more (superseded when tracks were added or
   removed: :mod:`hiddenscope_core.versions`) are removed once superseded for
   ``superseded_grace_seconds`` (24 h): readers that opened them had that long to finish.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hiddenscope_core.layout import WORK_SUFFIX
from hiddenscope_core.versions import collect_superseded
from hiddenscope_service.celery_app import service_celery
from hiddenscope_service.jobs import JobStore
from hiddenscope_service.workflow import Lock

from hiddenscope_ingest.settings import IngestSettings, get_settings
from hiddenscope_ingest.tasknames import JOB_KIND, STORE_PREFIX, TASK_NAME

log = logging.getLogger(__name__)

LOCK_NAME = "reconcile-lock"
LOCK_SECONDS = 300
"""A pass holds the reconcile lock at most this long (it expires if the process dies)."""


@dataclass
class ReconcileReport:
    requeued: list[str] = field(default_factory=list)
    removed_staging: list[str] = field(default_factory=list)
    removed_uploads: list[str] = field(default_factory=list)
    removed_versions: list[str] = field(default_factory=list)
    skipped: bool = False

    def as_dict(self) -> dict[str, object]:
        return {
            "requeued": self.requeued,
            "removed_staging": self.removed_staging,
            "removed_uploads": self.removed_uploads,
            "removed_versions": self.removed_versions,
            "skipped": self.skipped,
        }


def newest_mtime(path: Path) -> float:
    """The latest modification time of ``path`` and everything below it (0 if it vanished)."""
    try:
        newest = path.lstat().st_mtime
    except FileNotFoundError:
        return 0.0
    if path.is_dir() and not path.is_symlink():
        for dirpath, dirnames, filenames in os.walk(path):
            for n in (*dirnames, *filenames):
                try:
                    newest = max(newest, os.lstat(os.path.join(dirpath, n)).st_mtime)
                except FileNotFoundError:
                    continue
    return newest


def reconcile(
    settings: IngestSettings,
    store: JobStore,
    enqueue: Callable[[str], None],
    *,
    dry_run: bool = False,
    lock: bool = True,
) -> ReconcileReport:
    """One reconciliation pass (see the module docstring). ``lock``: skip the pass if another
    process holds the reconcile lock."""
    report = ReconcileReport()
    if lock:
        with Lock(store, LOCK_NAME).held(LOCK_SECONDS) as got:
            if not got:
                report.skipped = True
                return report
            _pass(settings, store, enqueue, dry_run, report)
    else:
        _pass(settings, store, enqueue, dry_run, report)
    if (
        report.requeued
        or report.removed_staging
        or report.removed_uploads
        or report.removed_versions
    ):
        log.warning("reconcile: %s", json.dumps(report.as_dict()))
    return report


def _pass(
    settings: IngestSettings,
    store: JobStore,
    enqueue: Callable[[str], None],
    dry_run: bool,
    report: ReconcileReport,
) -> None:
    now = store.now()
    unfinished = store.unfinished(JOB_KIND)
    live_staging = {j.notes["staging_id"] for j in unfinished if j.notes.get("staging_id")}
    live_jobs = {j.id for j in unfinished}

    # 1. stuck jobs back on the queue
    for job in unfinished:
        last = float(job.notes.get("requeued_at") or 0)
        if now - last < settings.requeue_after_seconds:
            continue
        idle = now - job.updated_at
        stuck = (job.status == "queued" and idle >= settings.requeue_after_seconds) or (
            job.status == "running" and job.lease_until < now
        )
        if not stuck:
            continue
        report.requeued.append(job.id)
        if not dry_run:
            store.set_note(job.id, "requeued_at", str(now))
            enqueue(job.id)

    # 2. staging directories of dead attempts
    wall = time.time()
    layout = settings.layout
    staging = layout.staging_dir
    if staging.is_dir():
        for entry in sorted(staging.iterdir()):
            if entry.name in live_staging:
                continue
            if wall - newest_mtime(entry) < settings.leftover_after_seconds:
                continue
            report.removed_staging.append(entry.name)
            if not dry_run:
                shutil.rmtree(entry, ignore_errors=True)

    # builds an abort could not remove at once (a writer was still busy in them)
    trash = layout.trash_dir
    if trash.is_dir():
        for entry in sorted(trash.iterdir()):
            if wall - newest_mtime(entry) < settings.leftover_after_seconds:
                continue
            report.removed_staging.append(f"trash/{entry.name}")
            if not dry_run:
                shutil.rmtree(entry, ignore_errors=True)

    # 3. uploads and work directories of finished or forgotten jobs
    uploads = layout.uploads_dir
    if uploads.is_dir():
        for entry in sorted(uploads.iterdir()):
            job_id = entry.name.removesuffix(WORK_SUFFIX)
            if job_id in live_jobs:
                continue
            if wall - newest_mtime(entry) < settings.leftover_after_seconds:
                continue
            if store.exists(job_id) and store.get(job_id).status in ("queued", "running"):
                continue  # became unfinished since the listing (created meanwhile)
            report.removed_uploads.append(entry.name)
            if not dry_run:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)

    # 4. superseded dataset versions, after their grace period
    report.removed_versions = collect_superseded(
        layout.root, settings.superseded_grace_seconds, dry_run=dry_run
    )


def make_enqueue(settings: IngestSettings) -> Callable[[str], None]:
    """``enqueue(job_id)`` sending ``ingest.convert`` to the ingest queue (for the CLI)."""
    celery = service_celery("hiddenscope_ingest_reconcile", lambda: settings)

    def enqueue(job_id: str) -> None:
        celery.send_task(TASK_NAME, args=[job_id], queue=settings.queue)

    return enqueue


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="One reconciliation pass of the ingest service")
    ap.add_argument("--dry-run", action="store_true", help="report, change nothing")
    args = ap.parse_args(argv)
    settings = get_settings()
    store = JobStore.for_service(settings, STORE_PREFIX)
    report = reconcile(settings, store, make_enqueue(settings), dry_run=args.dry_run)
    print(json.dumps(report.as_dict(), indent=2))


if __name__ == "__main__":
    main()
