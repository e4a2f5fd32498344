"""What the HiddenScope services share.

* :mod:`hiddenscope_service.settings` — the pydantic-settings base class (one subclass per service,
  env-prefixed, built lazily) and ``load_settings`` (a wrong variable stops a process, named).
* :mod:`hiddenscope_service.problems` — RFC 9457 ``application/problem+json`` error responses.
* :mod:`hiddenscope_service.jobs` — the Redis job store, the source of truth for async jobs; job
  ids ``{kind}-{token}``.
* :mod:`hiddenscope_service.workflow` — the job workflow on that store: a worker's lease on a job
  and its heartbeat, a job's parts (tasks or a board) with leases, results and problems, locks
  and side values. Nothing else talks to Redis.
* :mod:`hiddenscope_service.job_resource` — the ``/v1/jobs/{id}`` resource both services serve
  (common fields, links, timings, synchronous wait) and its routes (``job_router``).
* :mod:`hiddenscope_service.app_parts` — the health route and the OpenAPI assembly.
* :mod:`hiddenscope_service.celery_app` — the Celery app factory (``service_celery``) with the
  reliability settings of ``notes/ecosystem.md`` §4.
* :mod:`hiddenscope_service.testing` — pytest helpers that run a real ``redis-server``, Celery
  workers and uvicorn servers as subprocesses.

Nothing here connects to anything at import time.
"""
