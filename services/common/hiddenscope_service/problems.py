"""RFC 9457 problem details (``application/problem+json``) for every error a service answers.

Install once per app with :func:`install_problem_handlers`. Then:

* ``HTTPException`` (FastAPI/Starlette) → a problem with its status and ``detail``;
* ``RequestValidationError`` → 422 with an ``errors`` list (``loc``, ``msg``, ``type``);
* :class:`hiddenscope_core.errors.HiddenScopeError` → its ``status`` and ``title``;
* :class:`ProblemError` → raised by service code for anything else (with extension members);
* any other exception → 500 ``Internal error`` with no traceback or message in the body (the
  exception is logged server-side).

Use :data:`PROBLEM_RESPONSES` (or :func:`problem_responses`) in route decorators so the OpenAPI
document names the problem schema.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from hiddenscope_core.errors import HiddenScopeError
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"


class Problem(BaseModel):
    """RFC 9457 problem details. Extension members are allowed (e.g. ``errors``, ``job_id``)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(default="about:blank", description="URI reference identifying the type")
    title: str = Field(description="short, human-readable summary of the problem type")
    status: int = Field(description="the HTTP status code")
    detail: str | None = Field(default=None, description="what happened and what to fix")
    instance: str | None = Field(default=None, description="URI reference of this occurrence")


class ProblemError(Exception):
    """Raise from service code to answer with a problem.

    ``extensions`` become extra members of the body; ``headers`` are added to the response.
    """

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        title: str | None = None,
        type_: str = "about:blank",
        headers: Mapping[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title or _default_title(status)
        self.type = type_
        self.headers = dict(headers or {})
        self.extensions = extensions

    def to_problem(self, instance: str | None = None) -> Problem:
        return Problem(
            type=self.type,
            title=self.title,
            status=self.status,
            detail=self.detail,
            instance=instance,
            **self.extensions,
        )


def _default_title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem_from_exception(exc: BaseException) -> Problem:
    """The problem body for an exception, as the handlers answer it (also used to store a failed
    job's ``error``). Unknown exceptions become a bare 500 without their message."""
    if isinstance(exc, ProblemError):
        return exc.to_problem()
    if isinstance(exc, HiddenScopeError):
        return Problem(title=exc.title, status=exc.status, detail=exc.detail)
    if isinstance(exc, StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else None
        return Problem(title=_default_title(exc.status_code), status=exc.status_code, detail=detail)
    return Problem(
        title="Internal error",
        status=500,
        detail="the server failed unexpectedly; the error has been logged",
    )


def problem_response(problem: Problem, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """A JSON response with the problem media type and the problem's status."""
    return JSONResponse(
        status_code=problem.status,
        content=jsonable_encoder(problem.model_dump(exclude_none=True)),
        media_type=PROBLEM_MEDIA_TYPE,
        headers=dict(headers) if headers else None,
    )


def _instance(request: Request) -> str:
    return request.url.path


async def _problem_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProblemError)
    problem = exc.to_problem(instance=_instance(request))
    return problem_response(problem, exc.headers)


async def _core_error_handler(request: Request, exc: Exception) -> JSONResponse:
    problem = problem_from_exception(exc)
    problem.instance = _instance(request)
    return problem_response(problem)


async def _http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    problem = problem_from_exception(exc)
    problem.instance = _instance(request)
    return problem_response(problem, exc.headers)


def _clean_validation_errors(errors: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for err in errors:
        item = {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type")}
        out.append(jsonable_encoder(item))
    return out


async def _validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = _clean_validation_errors(exc.errors())
    first = errors[0] if errors else None
    detail = "the request is invalid"
    if first is not None:
        loc = ".".join(str(x) for x in first["loc"])
        detail = f"{loc}: {first['msg']}" if loc else str(first["msg"])
    problem = Problem(
        title="Unprocessable content",
        status=422,
        detail=detail,
        instance=_instance(request),
        errors=errors,
    )
    return problem_response(problem)


async def _unexpected_error_handler(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    problem = problem_from_exception(exc)
    problem.instance = _instance(request)
    return problem_response(problem)


def install_problem_handlers(app: FastAPI) -> None:
    """Answer every error of ``app`` as ``application/problem+json``."""
    app.add_exception_handler(ProblemError, _problem_error_handler)
    app.add_exception_handler(HiddenScopeError, _core_error_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_error_handler)
    app.add_exception_handler(Exception, _unexpected_error_handler)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries naming the problem schema for the given statuses."""
    return {
        status: {
            "model": Problem,
            "description": _default_title(status),
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }
