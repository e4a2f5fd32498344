"""The match worker side: one shard of a match job, the merge, and the search-index build.

A shard task claims its part of the job (:func:`hiddenscope_match.matches.shard_parts`) under a
lease kept by a heartbeat, runs the core's ``match_shard`` and records the shard's partial
top-k as the part's result (a re-run overwrites it). Whoever records the last shard — or a
redelivered shard that finds every shard done — merges all partials with the core's
``merge_partials`` (exact) and finishes the job with a compare-and-set, so a duplicate merge is
harmless. A shard whose part another live worker holds is retried later (:class:`ShardBusy`).
"""

from __future__ import annotations

import logging
import time

from hiddenscope_core.errors import InvalidQuery, NotFound
from hiddenscope_core.match import match_shard, merge_partials
from hiddenscope_core.models import MatchPartial, MatchQuery
from hiddenscope_service.jobs import JobStore
from hiddenscope_service.problems import problem_from_exception

from hiddenscope_match.datasets import Datasets
from hiddenscope_match.matches import shard_floor, shard_parts
from hiddenscope_match.search import index_build_lock, index_errors
from hiddenscope_match.search_index import build_index, clean_caches
from hiddenscope_match.settings import MatchSettings

log = logging.getLogger(__name__)


class ShardBusy(Exception):
    """Another live worker holds the shard: deliver it again after ``retry_after`` seconds (if
    that worker died meanwhile, its lease has run out and the retry takes the shard over)."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"the shard is held by another worker; retry in {retry_after:.1f}s")
        self.retry_after = retry_after


def run_shard(
    job_id: str,
    part: int,
    lo: int,
    hi: int,
    store: JobStore,
    datasets: Datasets,
    owner: str,
    lease_seconds: float,
) -> str:
    """Run shard ``part`` (steps ``[lo, hi)``) of match job ``job_id`` as ``owner``; merge and
    finish the job if every shard is done. Idempotent; returns what happened (for logs).
    Raises :class:`ShardBusy`."""
    claim = shard_parts(store, job_id).claim(part, owner, lease_seconds)
    if claim.outcome == "busy":
        raise ShardBusy(claim.retry_after)
    if claim.outcome == "done":
        return merge_job(job_id, store) if claim.complete else "shard-done"
    if claim.outcome != "run":
        return claim.outcome  # cancelled, failed, exhausted, terminal or gone: nothing to do
    job = store.get(job_id)
    query = MatchQuery.model_validate(job.payload["query"])
    floor = shard_floor(store)
    t0 = time.perf_counter()
    with claim.heartbeat():
        try:
            ds = datasets.get(str(job.payload["dataset_id"]))
            # shards finished earlier tell how many shared cells the global top k reaches
            partial = match_shard(ds, query, lo, hi, floor=floor.maximum(job_id))
        except Exception as exc:  # a shard error fails the whole job, with its problem
            if not isinstance(exc, (InvalidQuery, NotFound)):
                log.exception("shard %d [%d, %d) of job %s failed", part, lo, hi, job_id)
            claim.fail(problem_from_exception(exc).model_dump(exclude_none=True))
            return "failed"
    kth = partial.kth_intersection(query.top_k)
    if kth > 0:
        floor.raise_to(job_id, kth)
    log.info("job %s shard %d [%d, %d) in %.3fs", job_id, part, lo, hi, time.perf_counter() - t0)
    progress = claim.done(partial.model_dump_json())
    if progress.status == "running" and progress.complete:
        return merge_job(job_id, store)
    return "shard-done"


def merge_job(job_id: str, store: JobStore) -> str:
    """Merge the recorded partials of a job whose shards are all done and finish it."""
    job = store.get(job_id)
    if job.status != "running":
        return "merged-elsewhere"
    parts = shard_parts(store, job_id)
    results = parts.results()
    if len(results) < job.progress.total:
        return "shard-done"
    query = MatchQuery.model_validate(job.payload["query"])
    partials = [MatchPartial.model_validate_json(results[i]) for i in sorted(results)]
    result = merge_partials(query, partials)
    moved = store.transition(
        job_id, ("running",), "succeeded", result=result.model_dump(mode="json")
    )
    if moved:
        parts.drop()
        shard_floor(store).delete(job_id)
    return "merged" if moved else "merged-elsewhere"


def build_search_index(
    dataset_id: str, store: JobStore, datasets: Datasets, settings: MatchSettings
) -> str:
    """Worker side of ``match.build_search_index``: build the dataset's phrase index (unless it
    exists), note a failure for the API to report, end the build's lock, then remove the caches
    of datasets that no longer exist. Idempotent; returns what happened (for logs)."""
    cache = settings.layout.cache_dir
    errors = index_errors(store)
    t0 = time.perf_counter()
    outcome = "gone"
    try:
        ds = datasets.get(dataset_id)
        outcome = "built" if build_index(ds, cache) else "exists"
        errors.delete(dataset_id)
        log.info("search index of %s: %s in %.3fs", ds.id, outcome, time.perf_counter() - t0)
    except NotFound:
        outcome = "gone"  # deleted meanwhile, or no tokens
    except Exception as exc:
        log.exception("building the search index of %s failed", dataset_id)
        errors.put(dataset_id, type(exc).__name__)
        outcome = "failed"
    finally:
        index_build_lock(store).release(dataset_id)  # the API locked it when it queued the build
        try:
            live = {m.id for m in datasets.catalog.list()}
            removed = clean_caches(cache, live)
            if removed:
                log.info("removed the caches of deleted datasets %s", removed)
        except Exception:
            log.exception("cleaning the caches under %s failed", cache)
    return outcome
