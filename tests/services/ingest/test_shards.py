"""Layer shards of a conversion shared by the worker's pool processes (``hiddenscope_ingest.
shards``): the shards as parts of the job in Redis, a conversion split over processes, bad data
met in any shard, and a helper killed mid-shard."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import httpx
import numpy as np
from hiddenscope_ingest.shards import shard_parts
from hiddenscope_ingest.tasknames import JOB_KIND
from hiddenscope_service.jobs import JobStore
from hiddenscope_service.workflow import PartsState

from tests.services.helpers import wait_job
from tests.services.ingest.helpers import (
    IngestStack,
    ingest_fails,
    ingest_ok,
    npy_bytes,
    open_published,
    post_upload,
    states,
)


def _store(stack: IngestStack) -> JobStore:
    return JobStore.from_url(stack.redis.url, prefix="hiddenscope:ingest")


def test_shard_parts_claims_leases_and_problems(ingest_stack: IngestStack) -> None:
    store = _store(ingest_stack)
    job, _ = store.create(JOB_KIND, {})
    parts = shard_parts(store, job.id, "build1", "write")
    assert parts.claim_next("a", 5) is None  # not posted yet
    parts.post(3)
    a, b, c = (parts.claim_next(o, 0.5) for o in "abc")
    assert a is not None
    assert b is not None
    assert c is not None
    assert (a.index, b.index, c.index) == (0, 1, 2)
    assert parts.claim_next("d", 0.5) is None  # all held
    assert a.renew()
    assert not parts.renew(0, "b", 0.5)  # only the holder renews
    b.done()
    time.sleep(0.8)  # the leases of 0 and 2 expire; 1 is done for good
    d = parts.claim_next("d", 5)
    e = parts.claim_next("e", 5)
    assert d is not None
    assert e is not None
    assert (d.index, e.index) == (0, 2)
    assert parts.claim_next("f", 5) is None
    assert not a.renew()  # a's lease was taken over
    problem = {"status": 422, "title": "Invalid data", "detail": "bad row"}
    e.fail(problem)
    assert parts.state() == PartsState(3, 1, [problem])
    parts.drop()
    d.done()  # a late finish does not bring dropped parts back
    assert parts.state() == PartsState(0, 0, [])
    assert parts.claim_next("g", 5) is None


def test_shard_parts_have_no_attempt_cap(ingest_stack: IngestStack) -> None:
    """A shard whose holders keep dying is taken over every time (the job's own attempts are
    capped, not its shards'); a cancel request stops the claims."""
    store = _store(ingest_stack)
    job, _ = store.create(JOB_KIND, {})
    parts = shard_parts(store, job.id, "build1", "index")
    parts.post(1)
    for i in range(store.max_attempts + 2):
        claim = parts.claim_next(f"dying-{i}", 0.05)
        assert claim is not None, i
        assert claim.index == 0
        time.sleep(0.1)
    store.request_cancel(job.id)
    assert parts.claim_next("late", 5) is None


SEQ_STARTS = [0, 4095, 30_000]  # 4096 is a shard edge, not a sequence start


def _two_layers(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "layers": [
            {"name": "c", "source": {"file": "c.npy"}, "thresholds": [0.0, 0.5]},
            {"name": "h", "source": {"file": "h.npy"}, "transform": "tanh"},
        ],
        "sequences": {"starts": SEQ_STARTS},
        **extra,
    }


def test_a_conversion_is_shared_by_the_pool(
    client: httpx.Client, ingest_stack: IngestStack
) -> None:
    """60,000 steps in shards of 4,096: 15 shards per layer and phase, worked off by the job's
    pool process and a helper in the other one; the dataset is what was uploaded."""
    c, h = states(60_000, 8, seed=21), states(60_000, 5, seed=22)
    c[4000:4200, 3] = 0.9  # a run across a shard edge
    job = ingest_ok(client, _two_layers("shared"), {"c.npy": npy_bytes(c), "h.npy": npy_bytes(h)})
    # 15 shards of each of 2 layers; the job resource says so, and how fast it went
    assert job["shards"] == {"phase": "index", "done": 30, "total": 30}
    assert job["progress"]["done"] == job["progress"]["total"] == 60_000 * 4
    assert job["steps_per_second"] > 0
    ds = open_published(ingest_stack.data_root, "shared")
    np.testing.assert_array_equal(ds.window("c", 0, 60_000), c)
    np.testing.assert_array_equal(ds.window("h", 0, 60_000), np.tanh(h))
    assert ds.manifest.part_steps == 1024
    st = ds.cell_stats("c")
    np.testing.assert_array_equal(st["min"], c.min(axis=0).astype(np.float64))
    np.testing.assert_array_equal(st["max"], c.max(axis=0).astype(np.float64))
    frac = ds.cell_on_fraction("c")  # (thresholds, cells)
    np.testing.assert_allclose(frac[1], (c >= 0.5).mean(axis=0))
    starts, ends = ds.on_intervals("c", 0.5, 3, 4090, 4100)
    # brute force: the runs of cell 3 at 0.5 overlapping [4090, 4100), cut at sequence starts
    on = np.concatenate([[False], c[:, 3] >= 0.5, [False]])
    cut = np.zeros_like(on)
    cut[[1 + s for s in SEQ_STARTS[1:]]] = True
    begins = np.flatnonzero(on[1:-1] & (~on[:-2] | cut[1:-1]))
    want = []
    for b in begins:
        e = b + 1
        while e < len(c) and on[e + 1] and not cut[e + 1]:
            e += 1
        if b < 4100 and e > 4090:
            want.append((int(b), int(e)))
    assert list(zip(starts.tolist(), ends.tolist(), strict=True)) == want
    assert any(b < 4096 < e for b, e in want)  # one run across the shard edge at 4096
    helpers = {k: v for k, v in _store(ingest_stack).notes(job["id"]).items()
               if k.startswith("helper:")}  # fmt: skip
    assert helpers, "no helper task ran a shard: the other pool process sat idle"


def test_bad_data_in_any_shard_fails_the_job(
    client: httpx.Client, ingest_stack: IngestStack
) -> None:
    c, h = states(40_000, 4, seed=23), states(40_000, 3, seed=24)
    h[37_001, 2] = np.nan  # in the last shard, whichever process takes it
    problem = ingest_fails(
        client,
        _two_layers("nan-late", nan_policy="reject"),
        {"c.npy": npy_bytes(c), "h.npy": npy_bytes(h)},
    )
    assert problem["status"] == 422, problem
    assert "step 37001" in problem["detail"]
    assert not (ingest_stack.data_root / "names" / "nan-late").exists()
    staging = ingest_stack.data_root / "staging"
    assert not any(staging.iterdir()) if staging.exists() else True
    r = client.get("/healthz")
    assert r.status_code == 200


def test_a_helper_killed_mid_shard_is_taken_over(
    client: httpx.Client, ingest_stack: IngestStack
) -> None:
    """SIGKILL the pool process of a helper while it holds a shard: its lease runs out, the
    job's worker (or the redelivered helper) runs the shard again, and the job succeeds."""
    c = states(220_000, 8, seed=25)
    r = post_upload(client, {"name": "helper-killed", "layers": [
        {"name": "c", "source": {"file": "c.npy"}}]}, {"c.npy": npy_bytes(c)})  # fmt: skip
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    redis = ingest_stack.redis.client()
    job_key = f"hiddenscope:ingest:job:{job_id}"
    victim = 0
    deadline = time.monotonic() + 60
    while not victim and time.monotonic() < deadline:
        owner = redis.hget(job_key, "owner") or ""
        for key in redis.scan_iter(f"{job_key}:build:*"):
            for field, value in redis.hgetall(key).items():
                if field != "n" and value.startswith("run|") and owner not in value:
                    victim = int(value.split("|")[1].split(":")[1])
                    break
        time.sleep(0.005)
    assert victim, "no helper was seen holding a shard"
    os.kill(victim, signal.SIGKILL)
    job = wait_job(client, r.headers["location"], timeout=120)
    assert job["status"] == "succeeded", (job, ingest_stack.logs())
    ds = open_published(ingest_stack.data_root, "helper-killed")
    np.testing.assert_array_equal(ds.window("c", 0, c.shape[0]), c)
    assert ingest_stack.worker.alive()
