"""A stand-in upstream for the gateway's proxy tests: ``uvicorn --factory
tests.deploy.echo_upstream:create_app`` answers every path with a JSON echo of the request, and
``/v1/datasets`` with a header repeated twice (``vary``), as a real API may."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def _echo(request: Request) -> JSONResponse:
    response = JSONResponse({"method": request.method, "path": request.url.path})
    if request.url.path == "/v1/datasets":
        response.headers.append("vary", "accept")
        response.headers.append("vary", "origin")
    return response


def create_app() -> Starlette:
    return Starlette(routes=[Route("/{path:path}", _echo, methods=["GET", "POST"])])
