"""Celery tasks of the ingest service (queue ``ingest``): thin wrappers around
:func:`hiddenscope_ingest.worker.run_conversion` and :func:`hiddenscope_ingest.shards.run_helper`.
Payloads carry the job id only.

Run a worker with ``celery -A hiddenscope_ingest.tasks:celery_app worker -Q ingest``.
"""

from __future__ import annotations

import functools
from typing import Any

from celery import Task
from celery.signals import worker_process_init
from hiddenscope_service.celery_app import service_celery
from hiddenscope_service.jobs import JobStore
from hiddenscope_service.workflow import worker_owner

from hiddenscope_ingest.attempt import JobBusy
from hiddenscope_ingest.reconcile import reconcile
from hiddenscope_ingest.rlimits import limit_data
from hiddenscope_ingest.settings import get_settings
from hiddenscope_ingest.shards import run_helper
from hiddenscope_ingest.tasknames import (
    HELPER_TASK_NAME,
    RECONCILE_TASK_NAME,
    STORE_PREFIX,
    TASK_NAME,
    TRACKS_TASK_NAME,
)
from hiddenscope_ingest.worker import run_conversion

celery_app = service_celery("hiddenscope_ingest", get_settings)  # settings read on first use


@worker_process_init.connect
def _limit_pool_process(**_: Any) -> None:
    """Cap each pool process's heap when ``worker_max_data_bytes`` is set (see ``sandbox``)."""
    limit = get_settings().worker_max_data_bytes
    if limit:
        limit_data(limit)


@functools.cache
def job_store() -> JobStore:
    return JobStore.for_service(get_settings(), STORE_PREFIX)


@celery_app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True,
                 max_retries=None)  # fmt: skip
def convert_task(self: Task[Any, Any], job_id: str) -> str:
    """Convert the upload of job ``job_id`` and publish it (idempotent, at-least-once)."""
    owner = worker_owner(self.request.id)
    settings = get_settings()

    def spawn_helpers(build_id: str, phase: str, n: int) -> None:
        for _ in range(n):
            convert_shards_task.apply_async(args=[job_id, build_id, phase], queue=settings.queue)

    try:
        return run_conversion(job_id, owner, settings, job_store(), spawn_helpers)
    except JobBusy as busy:
        # another live attempt holds the lease; look again when it would have expired
        raise self.retry(countdown=max(1.0, busy.retry_after), max_retries=None) from None


@celery_app.task(name=HELPER_TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True)
def convert_shards_task(self: Task[Any, Any], job_id: str, build_id: str, phase: str) -> int:
    """Help job ``job_id``: run layer shard tasks of ``phase`` of build ``build_id`` until none
    is left (:mod:`hiddenscope_ingest.shards`). Returns how many it ran."""
    owner = worker_owner(self.request.id)
    return run_helper(job_id, build_id, phase, owner, get_settings(), job_store())


@celery_app.task(name=RECONCILE_TASK_NAME)
def reconcile_task(dry_run: bool = False) -> dict[str, object]:
    """One reconciliation pass (:mod:`hiddenscope_ingest.reconcile`)."""
    settings = get_settings()
    queue = settings.queue

    def enqueue(job_id: str) -> None:
        convert_task.apply_async(args=[job_id], queue=queue)

    return reconcile(settings, job_store(), enqueue, dry_run=dry_run).as_dict()


@celery_app.task(name=TRACKS_TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True,
                 max_retries=None)  # fmt: skip
def tracks_task(self: Task[Any, Any], job_id: str) -> str:
    """Add or remove tracks of a published dataset: a new version (a job with ``op: tracks``,
    :mod:`hiddenscope_ingest.track_attempt`; idempotent, at-least-once, leased like a
    conversion)."""
    owner = worker_owner(self.request.id)
    try:
        return run_conversion(job_id, owner, get_settings(), job_store())
    except JobBusy as busy:
        raise self.retry(countdown=max(1.0, busy.retry_after), max_retries=None) from None
