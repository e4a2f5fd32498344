"""Pieces every service app has: the health route and an OpenAPI document that also names the
models routes only use by hand (the problem body, bodies read from the raw request)."""

from __future__ import annotations

from typing import Any

import redis
from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from hiddenscope_service.jobs import JobStore


def add_health_route(app: FastAPI, store: JobStore) -> None:
    """``GET /healthz``: 200 ``{"status": "ok", "redis": true}`` when Redis answers a ping, else
    503 ``{"status": "degraded", "redis": false, "detail": "cannot reach Redis at host:port
    (…)"}``. The service keeps running and is healthy again as soon as Redis answers (redis-py
    reconnects on the next command)."""

    where = store.location

    @app.get("/healthz", summary="Liveness and Redis reachability", tags=["health"])
    async def healthz() -> JSONResponse:
        def ping() -> str | None:
            try:
                store.ping()
            except redis.RedisError as exc:
                return f"cannot reach Redis at {where} ({type(exc).__name__}: {exc})"
            return None

        problem = await run_in_threadpool(ping)
        if problem is None:
            return JSONResponse({"status": "ok", "redis": True})
        return JSONResponse(
            {"status": "degraded", "redis": False, "detail": problem}, status_code=503
        )


def install_openapi(app: FastAPI, extra_models: tuple[type[BaseModel], ...]) -> None:
    """Build the OpenAPI document once, with ``extra_models`` added to its components."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            comps = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in extra_models:
                extra = model.model_json_schema(ref_template="#/components/schemas/{model}")
                for name, sub in extra.pop("$defs", {}).items():
                    comps.setdefault(name, sub)
                comps.setdefault(model.__name__, extra)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
