"""Typed failures of the HiddenScope API: every non-2xx answer (an RFC 9457 problem, whose
``status``, ``title`` and ``detail`` the error carries) and every transport failure becomes one
:class:`ApiError` subclass."""

from __future__ import annotations

import contextlib
from typing import Any

import httpx


class ApiError(Exception):
    """Any failure talking to the API. ``message`` is a sentence fit for a user: the
    problem's ``detail`` when the server gave one."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        title: str | None = None,
        detail: str | None = None,
        type: str | None = None,
        instance: str | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.status = status
        """The HTTP status (``None``: no answer)."""
        self.title = title
        self.detail = detail
        """The problem's ``detail`` as sent (``None`` if the body had none)."""
        self.type = type
        self.instance = instance
        self.retry_after = retry_after
        """Seconds from the answer's ``Retry-After`` (e.g. a search index being built)."""


class ApiUnavailable(ApiError):
    """The API did not answer (connection refused, DNS, timeout) or answered 502/503/504."""


class NotFound(ApiError):
    """404: the dataset, layer, track or job does not exist (any more)."""


class BadRequest(ApiError):
    """Another 4xx (409, 413, 415, 422 ...): the request was refused; ``message`` says why."""


class ServerError(ApiError):
    """A 5xx other than 502-504 (a bug on the server), or an answer that is not what the API
    documents."""


class JobFailed(ApiError):
    """A job ended ``failed`` or ``cancelled``; the fields are those of its ``error`` problem."""


def _problem_fields(resp: httpx.Response) -> dict[str, Any]:
    """``message``, ``title``, ``detail``, ``type`` and ``instance`` of an error answer (a
    problem+json body, FastAPI's validation list, or any text)."""
    try:
        body = resp.json()
    except ValueError:
        text = resp.text.strip()
        return {"message": text[:300] or resp.reason_phrase or f"HTTP {resp.status_code}"}
    out: dict[str, Any] = {}
    if not isinstance(body, dict):
        out["message"] = f"HTTP {resp.status_code} {resp.reason_phrase}"
        return out
    for key in ("title", "type", "instance"):
        if isinstance(body.get(key), str):
            out[key] = body[key]
    detail = body.get("detail")
    if isinstance(detail, str) and detail:
        out["detail"] = detail
        out["message"] = detail
    elif isinstance(detail, list) and detail and isinstance(detail[0], dict):
        # FastAPI's own validation answer (a route outside the problem handlers)
        first = detail[0]
        loc = ".".join(str(x) for x in first.get("loc", []))
        out["message"] = f"{loc}: {first.get('msg', '')}".strip(": ")
    elif "title" in out:
        out["message"] = out["title"]
    else:
        out["message"] = f"HTTP {resp.status_code} {resp.reason_phrase}"
    return out


def raise_for_problem(resp: httpx.Response) -> None:
    """Raise the :class:`ApiError` subclass of a non-2xx answer; return for a 2xx or 3xx."""
    status = resp.status_code
    if status < 400:
        return
    fields = _problem_fields(resp)
    message: str = fields.pop("message")
    if status == 404:
        raise NotFound(message, status=status, **fields)
    if status in (502, 503, 504):
        retry_after: float | None = None
        with contextlib.suppress(ValueError):
            retry_after = float(resp.headers.get("retry-after", ""))
        raise ApiUnavailable(
            f"the API is unavailable (HTTP {status}): {message}",
            status=status,
            retry_after=retry_after,
            **fields,
        )
    if status >= 500:
        raise ServerError(f"the server failed (HTTP {status}): {message}", status=status, **fields)
    raise BadRequest(message, status=status, **fields)
