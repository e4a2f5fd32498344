"""The ingest service's FastAPI app: ``create_app()`` (``uvicorn --factory
hiddenscope_ingest.app:create_app``). Nothing connects until a request needs it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from hiddenscope_service.app_parts import add_health_route, install_openapi
from hiddenscope_service.celery_app import service_celery
from hiddenscope_service.jobs import JobStore
from hiddenscope_service.problems import Problem, install_problem_handlers

from hiddenscope_ingest.reconcile import reconcile
from hiddenscope_ingest.routes import PathIngestRequest, job_routes, router
from hiddenscope_ingest.settings import IngestSettings, get_settings
from hiddenscope_ingest.submission import IngestService
from hiddenscope_ingest.tasknames import STORE_PREFIX, TASK_NAME, TRACKS_TASK_NAME
from hiddenscope_ingest.track_submission import VersionsService
from hiddenscope_ingest.versions_routes import PathTracksRequest
from hiddenscope_ingest.versions_routes import router as versions_router

log = logging.getLogger(__name__)


async def _reconcile_forever(service: IngestService, interval: float) -> None:
    """A reconciliation pass at startup, then one every ``interval`` seconds; a failing pass
    (e.g. Redis briefly down) is logged and retried at the next tick."""
    while True:
        try:
            await run_in_threadpool(reconcile, service.settings, service.store, service.enqueue)
        except Exception:
            log.exception("reconcile pass failed")
        await asyncio.sleep(interval)


def create_app(settings: IngestSettings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = None
        if settings.reconcile_interval_seconds > 0:
            task = asyncio.create_task(
                _reconcile_forever(app.state.service, settings.reconcile_interval_seconds)
            )
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app = FastAPI(
        title="HiddenScope ingest",
        version="1.0.0",
        description="Uploads, conversion jobs and the dataset catalog of HiddenScope.",
        lifespan=lifespan,
    )
    install_problem_handlers(app)
    store = JobStore.for_service(settings, STORE_PREFIX)
    celery = service_celery("hiddenscope_ingest_api", lambda: settings)

    def enqueue(job_id: str) -> None:
        celery.send_task(TASK_NAME, args=[job_id], queue=settings.queue)

    def enqueue_tracks(job_id: str) -> None:
        celery.send_task(TRACKS_TASK_NAME, args=[job_id], queue=settings.queue)

    app.state.service = IngestService(settings=settings, store=store, enqueue=enqueue)
    app.state.versions = VersionsService(settings=settings, store=store, enqueue=enqueue_tracks)
    app.include_router(router)
    app.include_router(job_routes)
    app.include_router(versions_router)

    add_health_route(app, store)
    install_openapi(app, (PathIngestRequest, PathTracksRequest, Problem))
    return app
