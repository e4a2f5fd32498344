"""The Celery app factory with the reliability settings of ``notes/ecosystem.md`` §4.

* ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged only after its
  task returned, and requeued when the worker process dies → **every task must be idempotent**
  (keyed by its job id) and every job has an attempt cap
  (:class:`~hiddenscope_service.jobs.JobStore`).
* ``worker_prefetch_multiplier = 1``: long tasks, one at a time per process.
* ``task_time_limit`` (and a soft limit a little earlier) strictly below the Redis
  ``visibility_timeout``, else a still-running task is delivered a second time.
* The same ``visibility_timeout`` in ``broker_transport_options`` and
  ``result_backend_transport_options``.
* Redis must run with ``maxmemory-policy noeviction`` (evicted kombu bindings lose messages);
  :func:`redis_eviction_advice` says so when it is not.
* Task names are ``<service>.<verb>`` (``ingest.convert``, ``match.run_shard``) and each service
  routes its tasks to a queue of its own name (``ingest``, ``match``).

One factory for every service, API and worker alike: :func:`service_celery` builds the app of a
service from its settings (read only when the configuration is first needed, so a worker's
tasks module can create its app at import). Nothing here connects at import.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import redis
from celery import Celery
from kombu.entity import Queue


def celery_config(
    *,
    broker_url: str,
    queue: str,
    task_time_limit: int = 3 * 3600,
    visibility_timeout: int = 4 * 3600,
    unacked_restore_interval: float | None = None,
) -> dict[str, Any]:
    """The Celery settings of one service (a plain dict; :func:`service_celery` applies them).

    ``queue`` is the default (and only) queue of the app's tasks. ``unacked_restore_interval``
    shortens kombu's sweep that restores unacknowledged messages of dead workers (tests).

    Raises ``ValueError`` if ``task_time_limit >= visibility_timeout``.
    """
    if task_time_limit >= visibility_timeout:
        raise ValueError(
            f"task_time_limit ({task_time_limit}s) must be below the broker visibility_timeout "
            f"({visibility_timeout}s), else running tasks are delivered twice"
        )
    transport: dict[str, Any] = {"visibility_timeout": visibility_timeout}
    if unacked_restore_interval is not None:
        transport["unacked_restore_interval"] = unacked_restore_interval
        transport["unacked_restore_throttle"] = 0
    soft = max(1, task_time_limit - min(60, max(1, task_time_limit // 10)))
    return {
        "broker_url": broker_url,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": task_time_limit,
        "task_soft_time_limit": soft,
        "broker_transport_options": transport,
        "result_backend_transport_options": {"visibility_timeout": visibility_timeout},
        "visibility_timeout": visibility_timeout,
        "task_ignore_result": True,  # the job store is the record; Celery results are not read
        "task_default_queue": queue,
        "task_queues": [Queue(queue)],  # type: ignore[no-untyped-call]  # kombu is untyped
        "task_serializer": "json",
        "accept_content": ["json"],
        "broker_connection_retry_on_startup": True,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "enable_utc": True,
    }


class CelerySettings(Protocol):
    """What :func:`service_celery` reads of a service's settings (a ``ServiceSettings``
    subclass with a ``queue``)."""

    @property
    def celery_broker_url(self) -> str: ...

    @property
    def queue(self) -> str: ...

    @property
    def task_time_limit(self) -> int: ...

    @property
    def visibility_timeout(self) -> int: ...


def service_celery_config(settings: CelerySettings) -> dict[str, Any]:
    """:func:`celery_config` of a service's settings. ``{ENV_PREFIX}UNACKED_RESTORE_INTERVAL``
    (e.g. ``HIDDENSCOPE_MATCH_UNACKED_RESTORE_INTERVAL``; tests only) shortens the restore
    sweep of unacknowledged messages."""
    prefix = str(getattr(settings, "model_config", {}).get("env_prefix", ""))
    restore = os.environ.get(f"{prefix}UNACKED_RESTORE_INTERVAL".upper())
    return celery_config(
        broker_url=settings.celery_broker_url,
        queue=settings.queue,
        task_time_limit=settings.task_time_limit,
        visibility_timeout=settings.visibility_timeout,
        unacked_restore_interval=float(restore) if restore else None,
    )


def service_celery(
    name: str, settings: Callable[[], CelerySettings], *, include: Sequence[str] = ()
) -> Celery:
    """The Celery app of a service: ``name`` (e.g. ``hiddenscope_match`` for the worker,
    ``hiddenscope_match_api`` for the API that only sends), configured by
    :func:`service_celery_config` of ``settings()`` — called lazily, the first time the app's
    configuration is needed (a worker module can create the app at import without reading the
    environment)."""
    app = Celery(name, include=list(include), set_as_current=False)
    app.add_defaults(lambda: service_celery_config(settings()))
    return app


def redis_eviction_advice(client: redis.Redis) -> str | None:
    """``None`` if Redis evicts nothing, else a sentence saying what to configure."""
    try:
        policy = client.config_get("maxmemory-policy").get("maxmemory-policy")
    except redis.ResponseError:  # CONFIG may be disabled on managed Redis
        return None
    if policy in (None, "noeviction"):
        return None
    return (
        f"Redis maxmemory-policy is {policy!r}: set it to 'noeviction', or queued Celery "
        "messages and job records can be evicted"
    )
