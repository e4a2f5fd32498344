"""The reconciler: stuck jobs go back on the queue (and then finish), leftovers of dead attempts
are removed, and nothing that a live job owns or that is still changing is touched."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from hiddenscope_ingest.manifest import IngestManifest
from hiddenscope_ingest.reconcile import reconcile
from hiddenscope_ingest.settings import IngestSettings
from hiddenscope_ingest.tasknames import JOB_KIND, RECONCILE_TASK_NAME
from hiddenscope_ingest.worker import run_conversion
from hiddenscope_service.celery_app import service_celery
from hiddenscope_service.jobs import JobStore

from tests.services.helpers import wait_job
from tests.services.ingest.helpers import IngestStack, npy_bytes, open_published, states


@pytest.fixture
def local(ingest_stack: IngestStack, tmp_path: Path) -> tuple[IngestSettings, JobStore]:
    settings = IngestSettings(
        data_root=tmp_path / "data",
        redis_url=ingest_stack.redis.url,
        upload_dir=tmp_path / "uploads",
        lease_seconds=2,
        chunk_bytes=2**16,
        requeue_after_seconds=1,
        leftover_after_seconds=60,
    )
    store = JobStore.from_url(settings.redis_url, prefix="hiddenscope:ingest", max_attempts=3)
    return settings, store


def _job(settings: IngestSettings, name: str, store: JobStore, upload: Path | None = None) -> str:
    upload = upload or settings.layout.uploads_dir / name
    upload.mkdir(parents=True, exist_ok=True)
    (upload / "x.npy").write_bytes(npy_bytes(states(50, 3, seed=7)))
    m = IngestManifest.model_validate(
        {"name": name, "layers": [{"name": "l", "source": {"file": "x.npy"}}]}
    )
    job, _ = store.create(
        JOB_KIND,
        {"manifest": m.model_dump(mode="json"), "source_dir": str(upload), "owned": True},
    )
    return job.id


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    for p in [path, *path.rglob("*")]:
        os.utime(p, (t, t), follow_symlinks=False)


def test_stuck_jobs_are_requeued_once_per_period(local: tuple[IngestSettings, JobStore]) -> None:
    settings, store = local
    dead = _job(settings, "rc-dead", store)
    assert store.claim(dead, "dead-worker", lease_seconds=1).outcome == "claimed"
    queued = _job(settings, "rc-queued", store)
    held = _job(settings, "rc-held", store)
    assert store.claim(held, "live-worker", lease_seconds=60).outcome == "claimed"
    time.sleep(1.2)
    sent: list[str] = []
    report = reconcile(settings, store, sent.append, lock=False)
    assert {dead, queued} <= set(report.requeued)
    assert held not in report.requeued
    assert set(sent) == set(report.requeued)
    # not again within requeue_after_seconds
    again = reconcile(settings, store, sent.append, lock=False)
    assert dead not in again.requeued
    # the re-delivered message takes the dead attempt over and finishes the job
    assert run_conversion(dead, "worker-2", settings, store) == "succeeded"
    assert store.get(dead).attempts == 2
    assert run_conversion(queued, "worker-2", settings, store) == "succeeded"
    assert not (settings.layout.uploads_dir / "rc-dead").exists()
    # a held job keeps its lease: its worker's heartbeat renews it
    store.report_progress(held, "live-worker", 60)
    store.fail(held, {"status": 500, "title": "test", "detail": "cleanup"})


def test_leftovers_of_dead_jobs_are_removed(local: tuple[IngestSettings, JobStore]) -> None:
    settings, store = local
    staging = settings.data_root / "staging"
    old_dead = staging / "dead-attempt"
    (old_dead / "layers").mkdir(parents=True)
    (old_dead / "layers" / "part.parquet").write_bytes(b"x")
    _age(old_dead, 3600)
    fresh = staging / "fresh-attempt"
    fresh.mkdir()
    owned = staging / "owned-attempt"
    owned.mkdir()
    _age(owned, 3600)
    live = _job(settings, "rc-live", store)
    store.set_note(live, "staging_id", "owned-attempt")
    # an old upload of a finished job, an old work dir of an unknown job, a fresh upload
    finished = _job(settings, "rc-finished", store, settings.layout.uploads_dir / "finished-upload")
    store.fail(finished, {"status": 422, "title": "x", "detail": "x"})
    old_finished = settings.layout.uploads_dir / finished
    (settings.layout.uploads_dir / "finished-upload").rename(old_finished)
    _age(old_finished, 3600)
    gone_work = settings.layout.uploads_dir / "no-such-job.work"
    gone_work.mkdir(parents=True)
    _age(gone_work, 3600)
    receiving = settings.layout.uploads_dir / "being-received"
    receiving.mkdir()
    live_upload = settings.layout.uploads_dir / live
    (settings.layout.uploads_dir / "rc-live").rename(live_upload)
    _age(live_upload, 3600)

    # what an abort could not remove at once (a helper was still writing in it)
    old_trash = settings.data_root / "trash" / "aborted.1234"
    (old_trash / "layers").mkdir(parents=True)
    (old_trash / "layers" / "late.parquet").write_bytes(b"x")
    _age(old_trash, 3600)
    fresh_trash = settings.data_root / "trash" / "aborted.5678"
    fresh_trash.mkdir()

    dry = reconcile(settings, store, lambda _id: None, dry_run=True, lock=False)
    assert dry.removed_staging == ["dead-attempt", "trash/aborted.1234"]
    assert old_dead.exists()
    assert old_trash.exists()
    report = reconcile(settings, store, lambda _id: None, lock=False)
    assert report.removed_staging == ["dead-attempt", "trash/aborted.1234"]
    assert sorted(report.removed_uploads) == sorted([finished, "no-such-job.work"])
    for path in (old_dead, old_finished, gone_work, old_trash):
        assert not path.exists(), path
    for path in (fresh, owned, receiving, live_upload, fresh_trash):
        assert path.exists(), path
    store.fail(live, {"status": 500, "title": "test", "detail": "cleanup"})


def test_reconcile_task_on_the_real_worker(client: httpx.Client, ingest_stack: IngestStack) -> None:
    """A job whose message was lost (created, never enqueued) is found by the Celery task
    ``hiddenscope_ingest.reconcile`` and converted by the worker."""
    settings = IngestSettings(data_root=ingest_stack.data_root, redis_url=ingest_stack.redis.url)
    store = JobStore.from_url(settings.redis_url, prefix="hiddenscope:ingest")
    job_id = _job(settings, "rc-lost-message", store)
    # make it look old: queued longer than the default requeue_after_seconds
    redis = ingest_stack.redis.client()
    redis.hset(f"hiddenscope:ingest:job:{job_id}", "updated_at", str(store.now() - 3600))
    celery = service_celery("rc-test", lambda: settings)
    celery.send_task(RECONCILE_TASK_NAME, queue="ingest")  # no result backend: watch the job
    job = wait_job(client, f"/v1/jobs/{job_id}")
    assert store.get_note(job_id, "requeued_at")
    assert job["status"] == "succeeded", job
    ds = open_published(ingest_stack.data_root, "rc-lost-message")
    np.testing.assert_array_equal(ds.window("l", 0, 50), states(50, 3, seed=7))
    assert not (settings.layout.uploads_dir / "rc-lost-message").exists()
