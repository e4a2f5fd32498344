"""Celery tasks of the match service (queue ``match``): thin wrappers around
:func:`hiddenscope_match.service.run_shard` (payload: the job id and shard bounds only) and
:func:`hiddenscope_match.service.build_search_index` (payload: the dataset id).

Run a worker with ``celery -A hiddenscope_match.tasks:celery_app worker -Q match``.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from celery import Celery
from celery.signals import worker_init
from hiddenscope_service.jobs import JobStore

from hiddenscope_match.datasets import Datasets
from hiddenscope_match.service import (
    INDEX_TASK_NAME,
    JOB_PREFIX,
    TASK_NAME,
    build_search_index,
    run_shard,
)
from hiddenscope_match.settings import get_settings

celery_app = Celery("hiddenscope_match", set_as_current=False)
celery_app.config_from_object("hiddenscope_match.celeryconfig")  # lazy: read on first use
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
    s = get_settings()
    return JobStore.from_url(
        s.redis_url, prefix=JOB_PREFIX, ttl_seconds=s.job_ttl_seconds,
        max_attempts=s.max_attempts,
    )  # fmt: skip


@functools.cache
def datasets() -> Datasets:
    return Datasets(get_settings().data_root)


@celery_app.task(name=TASK_NAME, acks_late=True, reject_on_worker_lost=True)
def run_shard_task(job_id: str, part: int, lo: int, hi: int) -> str:
    """Shard ``part`` (steps ``[lo, hi)``) of match job ``job_id`` (idempotent)."""
    return run_shard(job_id, part, lo, hi, job_store(), datasets())


@celery_app.task(name=INDEX_TASK_NAME, acks_late=True, reject_on_worker_lost=True)
def build_search_index_task(dataset_id: str) -> str:
    """Build the phrase search index of dataset ``dataset_id`` (idempotent)."""
    return build_search_index(dataset_id, job_store(), datasets(), get_settings())
