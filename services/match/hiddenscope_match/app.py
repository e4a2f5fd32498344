"""The match service's FastAPI app: ``create_app()`` (``uvicorn --factory
hiddenscope_match.app:create_app``). Nothing connects until a request needs it."""

from __future__ import annotations

from fastapi import FastAPI
from hiddenscope_service.app_parts import add_health_route, install_openapi
from hiddenscope_service.celery_app import service_celery
from hiddenscope_service.jobs import JobStore
from hiddenscope_service.problems import Problem, install_problem_handlers

from hiddenscope_match.browse import Browse
from hiddenscope_match.datasets import Datasets
from hiddenscope_match.matches import JOB_PREFIX, TASK_NAME, MatchJobs
from hiddenscope_match.routes import job_routes, router
from hiddenscope_match.search import INDEX_TASK_NAME, PhraseSearch
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
    store = JobStore.for_service(settings, JOB_PREFIX)
    celery = service_celery("hiddenscope_match_api", lambda: settings)

    def enqueue(job_id: str, part: int, lo: int, hi: int) -> None:
        celery.send_task(TASK_NAME, args=[job_id, part, lo, hi], queue=settings.queue)

    def enqueue_index(dataset_id: str) -> None:
        celery.send_task(INDEX_TASK_NAME, args=[dataset_id], queue=settings.queue)

    datasets = Datasets(settings.data_root)
    app.state.search = PhraseSearch(settings, store, datasets, enqueue_index)
    app.state.browse = Browse(settings, datasets, app.state.search)
    app.state.matches = MatchJobs(settings, store, datasets, app.state.browse, enqueue)
    app.include_router(router)
    app.include_router(job_routes)

    add_health_route(app, store)
    install_openapi(app, (Problem,))
    return app
