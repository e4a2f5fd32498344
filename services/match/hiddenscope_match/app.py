"""The match service's FastAPI app: ``create_app()`` (``uvicorn --factory
hiddenscope_match.app:create_app``). Nothing connects until a request needs it."""

from __future__ import annotations

from fastapi import FastAPI
from hiddenscope_service.app_parts import add_health_route, install_openapi
from hiddenscope_service.celery_app import make_celery
from hiddenscope_service.jobs import JobStore
from hiddenscope_service.problems import Problem, install_problem_handlers

from hiddenscope_match.datasets import Datasets
from hiddenscope_match.routes import router
from hiddenscope_match.service import INDEX_TASK_NAME, JOB_PREFIX, TASK_NAME, MatchService
from hiddenscope_match.settings import MatchSettings, get_settings


def create_app(settings: MatchSettings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="HiddenScope match",
        version="1.0.0",
        description="Dataset info, states/tokens/track windows, select, phrase search and "
        "sharded match jobs over the datasets the ingest service publishes.",
    )
    install_problem_handlers(app)
    store = JobStore.from_url(
        settings.redis_url,
        prefix=JOB_PREFIX,
        ttl_seconds=settings.job_ttl_seconds,
        max_attempts=settings.max_attempts,
    )
    celery = make_celery(
        "hiddenscope_match_api",
        broker_url=settings.celery_broker_url,
        queue=settings.queue,
        task_time_limit=settings.task_time_limit,
        visibility_timeout=settings.visibility_timeout,
    )

    def enqueue(job_id: str, part: int, lo: int, hi: int) -> None:
        celery.send_task(TASK_NAME, args=[job_id, part, lo, hi], queue=settings.queue)

    def enqueue_index(dataset_id: str) -> None:
        celery.send_task(INDEX_TASK_NAME, args=[dataset_id], queue=settings.queue)

    app.state.service = MatchService(
        settings=settings,
        store=store,
        enqueue=enqueue,
        datasets=Datasets(settings.data_root),
        enqueue_index=enqueue_index,
    )
    app.include_router(router)

    add_health_route(app, store)
    install_openapi(app, (Problem,))
    return app
