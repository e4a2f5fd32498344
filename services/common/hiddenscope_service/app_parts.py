"""Pieces every service app has: the health route and an OpenAPI document that also names the
models routes only use by hand (the problem body, bodies read from the raw request)."""

from __future__ import annotations

from typing import Any

import redis
from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel


def add_health_route(app: FastAPI, client: redis.Redis) -> None:
    """``GET /healthz``: 200 when Redis answers a ping, else 503 ``degraded`` (the service
    keeps running and recovers when Redis is back)."""

    @app.get("/healthz", summary="Liveness and Redis reachability", tags=["health"])
    async def healthz() -> JSONResponse:
        def ping() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        ok = await run_in_threadpool(ping)
        return JSONResponse(
            {"status": "ok" if ok else "degraded", "redis": ok}, status_code=200 if ok else 503
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
