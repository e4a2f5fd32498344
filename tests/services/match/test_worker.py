"""The match worker side on the job workflow, in process (real Redis, no Celery): shards as
driving parts, the merge by whoever records the last shard (or a redelivery after that one
died), a shard held by a live worker, cancellation and a failing shard."""

from __future__ import annotations

import secrets
from pathlib import Path

import numpy as np
import pytest
from hiddenscope_core.match import match, match_shard
from hiddenscope_core.models import MatchQuery, MatchResult
from hiddenscope_core.reader import Catalog
from hiddenscope_core.writer import DatasetWriter
from hiddenscope_match.browse import Browse
from hiddenscope_match.datasets import Datasets
from hiddenscope_match.matches import MatchJobs, shard_floor, shard_parts
from hiddenscope_match.schemas import MatchRequest
from hiddenscope_match.settings import MatchSettings
from hiddenscope_match.worker import ShardBusy, run_shard
from hiddenscope_service.jobs import JobStore
from hiddenscope_service.testing import RedisServer


class _Stack:
    def __init__(self, root: Path, redis_server: RedisServer) -> None:
        settings = MatchSettings(data_root=root, redis_url=redis_server.url, shard_steps=300)
        self.store = JobStore(
            redis_server.client(), prefix=f"mw-{secrets.token_hex(4)}", max_attempts=3
        )
        self.datasets = Datasets(root)
        self.sent: list[tuple[str, int, int, int]] = []
        self.jobs = MatchJobs(
            settings,
            self.store,
            self.datasets,
            Browse(settings, self.datasets),
            lambda *shard: self.sent.append(shard),
        )

    def submit(self, name: str = "w") -> str:
        job, _ = self.jobs.submit(name, MatchRequest(layer="l", cells=[0, 1], top_k=5), None)
        return job.id

    def run(self, shard: tuple[str, int, int, int], owner: str = "w") -> str:
        return run_shard(*shard, self.store, self.datasets, owner, 30)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("worker") / "data"
    w = DatasetWriter.create(root, "w", n_steps=1000)
    w.set_sequences([0, 400, 700])
    w.add_layer("l", n_cells=4, dtype="float32", transform="none").write(
        np.random.default_rng(3).normal(0, 1, (1000, 4)).astype(np.float32)
    )
    w.publish()
    return root


def test_shards_merge_exactly_and_a_redelivery_merges_for_a_dead_last_shard(
    root: Path, redis_server: RedisServer
) -> None:
    s = _Stack(root, redis_server)
    job_id = s.submit()
    assert len(s.sent) == 4
    assert [s.run(shard) for shard in s.sent] == ["shard-done"] * 3 + ["merged"]
    job = s.store.get(job_id)
    assert job.status == "succeeded"
    assert (job.progress.done, job.progress.total, job.attempts) == (4, 4, 4)
    query = MatchQuery.model_validate(job.payload["query"])
    expected = match(s.datasets.get("w"), query)
    assert MatchResult.model_validate(job.result).hits == expected.hits
    assert shard_parts(s.store, job_id).state().total == 0  # the part set is dropped
    assert shard_floor(s.store).maximum(job_id, default=-1) == -1
    assert s.run(s.sent[0]) == "terminal"  # a late redelivery does nothing


def test_a_dead_last_shard_is_merged_by_its_redelivery(
    root: Path, redis_server: RedisServer
) -> None:
    s = _Stack(root, redis_server)
    job_id = s.submit()
    for shard in s.sent[:-1]:
        assert s.run(shard) == "shard-done"
    # the last shard's worker records its partial and dies before the merge
    _, part, lo, hi = s.sent[-1]
    query = MatchQuery.model_validate(s.store.get(job_id).payload["query"])
    partial = match_shard(s.datasets.get("w"), query, lo, hi)
    claim = shard_parts(s.store, job_id).claim(part, "dies", 30)
    assert claim.done(partial.model_dump_json()).complete
    assert s.store.get(job_id).status == "running"
    assert s.run(s.sent[-1]) == "merged"  # the broker redelivers its message
    job = s.store.get(job_id)
    assert job.status == "succeeded"
    assert MatchResult.model_validate(job.result).hits == match(s.datasets.get("w"), query).hits


def test_busy_cancelled_and_failing_shards(root: Path, redis_server: RedisServer) -> None:
    s = _Stack(root, redis_server)
    job_id = s.submit()
    first = s.sent[0]
    assert shard_parts(s.store, job_id).claim(first[1], "other", 30).outcome == "run"
    with pytest.raises(ShardBusy) as busy:
        s.run(first)
    assert 0 < busy.value.retry_after <= 30
    s.store.request_cancel(job_id)
    assert s.run(s.sent[1]) == "cancelled"
    assert s.store.get(job_id).status == "cancelled"

    # a shard whose dataset was deleted meanwhile fails the job with its problem
    w = DatasetWriter.create(root, "gone", n_steps=100)
    w.add_layer("l", n_cells=4, dtype="float32", transform="none").write(
        np.zeros((100, 4), np.float32)
    )
    w.publish()
    s.sent.clear()
    job_id = s.submit("gone")
    Catalog(root).delete("gone")
    assert s.run(s.sent[0]) == "failed"
    job = s.store.get(job_id)
    assert job.status == "failed"
    assert job.error is not None
    assert job.error["status"] == 404
