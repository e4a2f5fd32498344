"""Celery tasks of the match service (queue ``match``): thin wrappers around
:func:`hiddenscope_match.worker.run_shard` (payload: the job id and shard bounds only) and
:func:`hiddenscope_match.worker.build_search_index` (payload: the dataset id).

Run a worker with ``celery -A hiddenscope_match.tasks:celery_app worker -Q match``.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from celery import Task
from celery.signals import worker_init
from hiddenscope_service.celery_app import service_celery
from hiddenscope_service.jobs import JobStore
from hiddenscope_service.workflow import worker_owner

from hiddenscope_match.datasets import Datasets
from hiddenscope_match.matches import JOB_PREFIX, TASK_NAME
from hiddenscope_match.search import INDEX_TASK_NAME
from hiddenscope_match.settings import get_settings
from hiddenscope_match.worker import ShardBusy, build_search_index, run_shard

celery_app = service_celery("hiddenscope_match", get_settings)  # settings read on first use
log = logging.getLogger(__name__)


@worker_init.connect
def _warm_up(**_: Any) -> None:
    """Load the compiled kernels in the worker's main process, before the pool forks (the
    pool processes inherit them): a fresh worker's first query is then not ~2 s slower."""
    if get_settings().warm_up:
        from hiddenscope_core.warmup import warm_up

        log.info("kernels loaded in %.2f s", warm_up())


@functools.cache
def job_store() -> JobStore:
    return JobStore.for_service(get_settings(), JOB_PREFIX)


@functools.cache
def datasets() -> Datasets:
    return Datasets(get_settings().data_root)


@celery_app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True,
                 max_retries=None)  # fmt: skip
def run_shard_task(self: Task[Any, Any], job_id: str, part: int, lo: int, hi: int) -> str:
    """Shard ``part`` (steps ``[lo, hi)``) of match job ``job_id`` (idempotent)."""
    owner = worker_owner(self.request.id)
    lease = float(get_settings().lease_seconds)
    try:
        return run_shard(job_id, part, lo, hi, job_store(), datasets(), owner, lease)
    except ShardBusy as busy:
        # another live worker holds the shard; look again when its lease would have run out
        raise self.retry(countdown=max(1.0, busy.retry_after), max_retries=None) from None


@celery_app.task(name=INDEX_TASK_NAME, acks_late=True, reject_on_worker_lost=True)
def build_search_index_task(dataset_id: str) -> str:
    """Build the phrase search index of dataset ``dataset_id`` (idempotent)."""
    return build_search_index(dataset_id, job_store(), datasets(), get_settings())
