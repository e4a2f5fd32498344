"""Job semantics over the real stack: idempotent retries, concurrent uploads, cancellation, and
at-least-once delivery (a killed worker process; re-runs of an attempt that died midway)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hiddenscope_ingest.attempt import JobBusy
from hiddenscope_ingest.settings import IngestSettings
from hiddenscope_ingest.tasknames import JOB_KIND
from hiddenscope_ingest.worker import run_conversion
from hiddenscope_service.jobs import JobStore

from tests.services.helpers import wait_job
from tests.services.ingest.helpers import (
    IngestStack,
    npy_bytes,
    open_published,
    post_upload,
    states,
)


def one_layer(name: str) -> dict[str, Any]:
    return {"name": name, "layers": [{"name": "l", "source": {"file": "x.npy"}}]}


def test_idempotent_retry_returns_the_same_job(
    client: httpx.Client, ingest_stack: IngestStack
) -> None:
    key = {"Idempotency-Key": "retry-" + os.urandom(6).hex()}
    files = {"x.npy": npy_bytes(states(50, 3))}
    r1 = post_upload(client, one_layer("idem-same"), files, key)
    assert r1.status_code == 202
    r2 = post_upload(client, one_layer("idem-same"), files, key)  # e.g. the response was lost
    assert r2.status_code == 202
    assert r2.headers["location"] == r1.headers["location"]
    job = wait_job(client, r1.headers["location"])
    assert job["status"] == "succeeded"
    # a retry after completion still answers with the original job, not a 409
    r3 = post_upload(client, one_layer("idem-same"), files, key)
    assert r3.status_code == 202
    assert r3.json()["id"] == job["id"]
    assert r3.json()["status"] == "succeeded"
    assert job["attempts"] == 1
    assert [d["name"] for d in client.get("/v1/datasets").json()["datasets"]].count(
        "idem-same"
    ) == 1
    assert not list((ingest_stack.data_root / "uploads").iterdir())


def test_two_concurrent_uploads(client: httpx.Client, ingest_stack: IngestStack) -> None:
    arrays = {name: states(4000, 16, seed=i) for i, name in enumerate(("conc-a", "conc-b"))}
    responses: dict[str, httpx.Response] = {}

    def upload(name: str) -> None:
        with httpx.Client(base_url=ingest_stack.url, timeout=60) as c:
            responses[name] = post_upload(c, one_layer(name), {"x.npy": npy_bytes(arrays[name])})

    threads = [threading.Thread(target=upload, args=(n,)) for n in arrays]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, r in responses.items():
        assert r.status_code == 202, r.text
        assert wait_job(client, r.headers["location"])["status"] == "succeeded"
        ds = open_published(ingest_stack.data_root, name)
        np.testing.assert_array_equal(ds.window("l", 0, 4000), arrays[name])


def test_concurrent_uploads_of_one_name(client: httpx.Client, ingest_stack: IngestStack) -> None:
    results: list[int | str] = []

    def upload(seed: int) -> None:
        with httpx.Client(base_url=ingest_stack.url, timeout=60) as c:
            r = post_upload(c, one_layer("conc-same"), {"x.npy": npy_bytes(states(3000, 8, seed))})
            if r.status_code != 202:
                results.append(r.status_code)
                return
            job = wait_job(c, r.headers["location"])
            results.append(
                job["status"] if job["status"] == "succeeded" else job["error"]["status"]
            )

    threads = [threading.Thread(target=upload, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results, key=str) == [409, 409, "succeeded"]
    assert not os.listdir(ingest_stack.data_root / "staging")


def test_cancel(client: httpx.Client, ingest_stack: IngestStack) -> None:
    big = states(120_000, 16)  # ~7.7 MB: hundreds of 64 KiB chunks
    r = post_upload(client, one_layer("cancelled"), {"x.npy": npy_bytes(big)})
    assert r.status_code == 202
    location = r.headers["location"]
    c = client.post(location + "/cancel")
    assert c.status_code == 202, c.text
    assert c.json()["cancel_requested"] is True
    job = wait_job(client, location)
    assert job["status"] == "cancelled", job
    assert client.get("/v1/datasets/cancelled").status_code == 404
    again = client.delete(location)
    assert again.status_code == 409
    assert again.headers["content-type"] == "application/problem+json"
    deadline = time.monotonic() + 10
    while os.listdir(ingest_stack.data_root / "staging") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.listdir(ingest_stack.data_root / "staging")


def test_killed_worker_process_is_redelivered(
    client: httpx.Client, ingest_stack: IngestStack
) -> None:
    """SIGKILL the pool process running a conversion: the message is requeued
    (reject_on_worker_lost), waits for the dead attempt's lease, and the job still succeeds once."""
    big = states(120_000, 16, seed=4)
    r = post_upload(client, one_layer("killed"), {"x.npy": npy_bytes(big)})
    assert r.status_code == 202
    job_id = r.json()["id"]
    store = ingest_stack.redis.client()
    key = f"hiddenscope:ingest:job:{job_id}"
    deadline = time.monotonic() + 30
    owner = ""
    while time.monotonic() < deadline:
        owner = store.hget(key, "owner") or ""
        if store.hget(key, "status") == "running" and owner:
            break
        time.sleep(0.01)
    assert owner, "the job never started"
    pid = int(owner.split(":")[1])
    os.kill(pid, signal.SIGKILL)
    job = wait_job(client, r.headers["location"], timeout=120)
    assert job["status"] == "succeeded", (job, ingest_stack.logs())
    assert job["attempts"] == 2
    ds = open_published(ingest_stack.data_root, "killed")
    np.testing.assert_array_equal(ds.window("l", 0, big.shape[0]), big)
    assert ingest_stack.worker.alive()


# -- attempt-level idempotency, in-process against the same Redis and data root --------------


@pytest.fixture
def local(ingest_stack: IngestStack, tmp_path: Path) -> tuple[IngestSettings, JobStore]:
    settings = IngestSettings(
        data_root=ingest_stack.data_root,
        redis_url=ingest_stack.redis.url,
        upload_dir=tmp_path / "uploads",
        lease_seconds=2,
        chunk_bytes=2**16,
    )
    store = JobStore.from_url(settings.redis_url, prefix="hiddenscope:ingest", max_attempts=3)
    return settings, store


def _job(settings: IngestSettings, store: JobStore, name: str, x: np.ndarray) -> str:
    upload = settings.layout.uploads_dir / name
    upload.mkdir(parents=True)
    (upload / "x.npy").write_bytes(npy_bytes(x))
    from hiddenscope_ingest.manifest import IngestManifest

    manifest = IngestManifest.model_validate(one_layer(name))
    job, _ = store.create(
        JOB_KIND,
        {"manifest": manifest.model_dump(mode="json"), "source_dir": str(upload), "owned": True},
    )
    return job.id


def test_rerun_after_a_dead_attempt(local: tuple[IngestSettings, JobStore]) -> None:
    settings, store = local
    x = states(200, 4, seed=8)
    job_id = _job(settings, store, "rerun", x)
    # attempt 1 "dies" after creating a staging directory
    assert store.claim(job_id, "dead-worker", lease_seconds=1).outcome == "claimed"
    stale = settings.data_root / "staging" / "stale-attempt"
    stale.mkdir(parents=True)
    store.set_note(job_id, "staging_id", "stale-attempt")
    with pytest.raises(JobBusy):  # its lease is still live
        run_conversion(job_id, "worker-2", settings, store)
    time.sleep(1.1)
    assert run_conversion(job_id, "worker-2", settings, store) == "succeeded"
    job = store.get(job_id)
    assert job.attempts == 2
    assert not stale.exists()
    assert not (settings.layout.uploads_dir / "rerun").exists()
    # a late duplicate delivery changes nothing
    assert run_conversion(job_id, "worker-3", settings, store) == "succeeded"
    assert store.get(job_id).attempts == 2


def test_rerun_after_publish_before_the_job_was_marked(
    local: tuple[IngestSettings, JobStore], ingest_stack: IngestStack
) -> None:
    settings, store = local
    job_id = _job(settings, store, "published-once", states(100, 3))
    assert run_conversion(job_id, "w1", settings, store) == "succeeded"
    first = store.get(job_id).result
    # simulate a crash between the atomic publish and the job's final transition
    (settings.layout.uploads_dir / "published-once").mkdir(parents=True)
    ingest_stack.redis.client().hset(
        f"hiddenscope:ingest:job:{job_id}",
        mapping={"status": "running", "owner": "w1", "lease_until": "0"},
    )
    assert run_conversion(job_id, "w2", settings, store) == "succeeded"
    assert store.get(job_id).result == first
    names = os.listdir(ingest_stack.data_root / "names")
    assert names.count("published-once") == 1


def test_poison_job_is_failed_after_max_attempts(local: tuple[IngestSettings, JobStore]) -> None:
    settings, store = local
    job_id = _job(settings, store, "poison", states(10, 2))
    for i in range(3):
        assert store.claim(job_id, f"crashing-{i}", lease_seconds=0.01).outcome == "claimed"
        time.sleep(0.02)
    assert run_conversion(job_id, "w", settings, store) == "failed"
    job = store.get(job_id)
    assert job.error is not None
    assert job.error["title"] == "Too many attempts"
