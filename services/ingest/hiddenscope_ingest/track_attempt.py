"""The worker side of a track change: one attempt at a job with payload ``op: tracks`` adds and
removes meta tracks of a published dataset and publishes the result as a new version (the core's
:class:`~hiddenscope_core.versions.VersionWriter`: a new id, the big files shared by hard links,
the name switched atomically; ``docs/ingest.md``). :func:`hiddenscope_ingest.worker.run_conversion`
runs it under the job's lease, like a conversion.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from hiddenscope_core.errors import NotFound
from hiddenscope_core.layout import Layout
from hiddenscope_core.models import DatasetManifest
from hiddenscope_core.reader import open_dataset
from hiddenscope_core.versions import VersionWriter, current_id
from hiddenscope_service.jobs import Job
from hiddenscope_service.workflow import Cancelled, JobLease, LeaseLost

from hiddenscope_ingest.attempt import Outcome, dataset_summary, failed_outcome
from hiddenscope_ingest.manifest import TracksManifest
from hiddenscope_ingest.settings import IngestSettings
from hiddenscope_ingest.track_plan import build_tracks_plan, write_tracks


def version_summary(m: DatasetManifest) -> dict[str, Any]:
    """A job's ``result.dataset``: the ingest summary plus the version fields."""
    return {
        **dataset_summary(m),
        "version": m.version,
        "parent_id": m.parent_id,
        "tracks_added": list(m.provenance.get("tracks_added", [])),
        "tracks_removed": list(m.provenance.get("tracks_removed", [])),
    }


def _published(layout: Layout, version_id: str) -> DatasetManifest | None:
    """The manifest of version ``version_id`` if it was published (it is, or was, the current
    version of its name), else None (never started, or renamed in but never named)."""
    try:
        m = open_dataset(layout.dataset(version_id)).manifest
    except NotFound:
        return None
    if current_id(layout.root, m.name) == version_id:
        return m
    if layout.superseded_marker(version_id).exists():
        return m
    return None


def attempt_tracks(
    job: Job,
    lease: JobLease,
    settings: IngestSettings,
    source_dir: Path,
    work: Path,
    spawn_helpers: object = None,
) -> Outcome:
    """One attempt at a track job (called by ``run_conversion`` under the job's lease;
    ``spawn_helpers`` is for conversions and unused here)."""
    job_id = job.id
    manifest = TracksManifest.model_validate(job.payload["manifest"])
    target = str(job.payload["target"])
    layout = settings.layout
    # an earlier attempt's leftovers: its staging directory, or a finished publication
    earlier = lease.get_note("staging_id")
    if earlier:
        finished = _published(layout, earlier)
        if finished is not None:
            return Outcome("succeeded", result={"dataset": version_summary(finished)})
        shutil.rmtree(layout.staging(earlier), ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    progress = lease.progress()

    try:
        progress(0, 0)
        provenance = {**manifest.provenance, "job_id": job_id}
        writer = VersionWriter.create(layout.root, target, provenance=provenance)
        try:
            lease.set_note("staging_id", writer.id)
            ds = open_dataset(layout.dataset(writer.base.id))
            plan = build_tracks_plan(manifest, ds, source_dir, settings.limits, work)
            try:
                total = max(1, ds.n_steps * len(plan.tracks))
                done = 0

                def tick(n: int) -> None:
                    nonlocal done
                    done += n
                    progress(done, total)

                for name in manifest.remove:
                    writer.remove_track(name)
                write_tracks(writer, plan, manifest.nan_policy, settings.chunk_bytes, tick)
                progress(total, total)
                published = writer.publish()
            finally:
                plan.close()
        except BaseException:
            writer.abort()
            raise
    except Cancelled:
        return Outcome("cancelled")
    except LeaseLost:
        raise
    except Exception as exc:
        return failed_outcome(exc, job_id, "the track job", settings.task_time_limit)
    return Outcome("succeeded", result={"dataset": version_summary(published)})
