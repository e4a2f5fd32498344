"""The UI's HTTP client follows jobs where the API says they are (the ``Location`` of the POST,
else ``links.self``), so a move of the job resource (``/v1/match-jobs/{id}`` to ``/v1/jobs/{id}``)
needs no UI change; a job known only by its id is looked up at ``/v1/jobs/{id}`` and then at the
older path. Failures become typed errors with the server's ``detail``."""

from __future__ import annotations

import httpx
import pytest
from hiddenscope_ui import api


def _client(handler: object) -> tuple[api.HiddenScopeApi, list[str]]:
    seen: list[str] = []

    def wrapped(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        return handler(request)  # type: ignore[operator]

    c = api.HiddenScopeApi("http://api.test")
    c.http = httpx.Client(base_url="http://api.test", transport=httpx.MockTransport(wrapped))
    return c, seen


def _job(job_id: str, status: str, **extra: object) -> dict[str, object]:
    return {"id": job_id, "status": status, "progress": {"done": 0, "total": 2}, **extra}


@pytest.mark.parametrize("where", ["/v1/jobs/J1", "/v1/match-jobs/J1", "/v2/somewhere/J1"])
def test_match_job_follows_the_location_header(where: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            # an absolute Location (as a proxy may write it) counts by its path
            return httpx.Response(
                202, headers={"Location": f"http://internal:9000{where}"}, json=_job("J1", "queued")
            )
        if request.url.path == where:
            return httpx.Response(200, json=_job("J1", "running", links={"cancel": where + "/x"}))
        return httpx.Response(404, json={"detail": "no such path"})

    c, seen = _client(handler)
    job = c.start_match("demo", {"layer": "l", "cells": [1]})
    assert job["status"] == "queued"
    got = c.match_job("J1", page_size=1)
    assert got["status"] == "running"
    assert seen == ["POST /v1/datasets/demo/matches", f"GET {where}"]
    # cancel goes to the job's own cancel link
    c.http = httpx.Client(
        base_url="http://api.test",
        transport=httpx.MockTransport(
            lambda r: (
                httpx.Response(202, json=_job("J1", "cancelled"))
                if r.url.path == where + "/x"
                else httpx.Response(404, json={"detail": r.url.path})
            )
        ),
    )
    assert c.cancel_job(got)["status"] == "cancelled"


def test_links_self_when_there_is_no_location() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(202, json=_job("J2", "queued", links={"self": "/v1/jobs/J2"}))
        if request.url.path == "/v1/jobs/J2":
            return httpx.Response(200, json=_job("J2", "succeeded"))
        return httpx.Response(404, json={"detail": "no"})

    c, seen = _client(handler)
    c.start_match("demo", {"layer": "l", "cells": [1]})
    assert c.match_job("J2")["status"] == "succeeded"
    assert seen[-1] == "GET /v1/jobs/J2"


def test_a_job_known_by_id_only_is_looked_up() -> None:
    home = "/v1/jobs/J3"

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == home:
            return httpx.Response(200, json=_job("J3", "succeeded"))
        return httpx.Response(
            404,
            headers={"Content-Type": "application/problem+json"},
            json={"title": "Not found", "detail": f"no job at {request.url.path}"},
        )

    c, seen = _client(handler)
    assert c.match_job("J3", page_size=1)["status"] == "succeeded"
    assert c.match_job("J3", page_size=1)["status"] == "succeeded"
    # once found, remembered: later reads go straight there
    assert seen.count(f"GET {home}") == 2


def test_an_unknown_job_is_not_found() -> None:
    c, _ = _client(lambda r: httpx.Response(404, json={"detail": "no job 'J4'"}))
    with pytest.raises(api.NotFound, match="no job 'J4'"):
        c.match_job("J4")


def test_ingest_upload_follows_its_location() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(
                202, headers={"Location": "/v1/ingest-jobs/I1"}, json=_job("I1", "queued")
            )
        if request.url.path == "/v1/ingest-jobs/I1":
            return httpx.Response(200, json=_job("I1", "running"))
        return httpx.Response(404, json={"detail": "no"})

    c, seen = _client(handler)
    c.upload_dataset("name: x\n", [])
    assert c.job("I1")["status"] == "running"
    assert seen == ["POST /v1/datasets", "GET /v1/ingest-jobs/I1"]


@pytest.mark.parametrize(
    ("status", "kind", "says"),
    [
        (422, api.BadRequest, "cells: must be sorted"),
        (500, api.ServerError, "the server failed (HTTP 500)"),
        (502, api.ApiUnavailable, "the API is unavailable (HTTP 502)"),
    ],
)
def test_problems_become_typed_errors(status: int, kind: type[api.ApiError], says: str) -> None:
    body = {"title": "x", "detail": "cells: must be sorted"}
    c, _ = _client(lambda r: httpx.Response(status, json=body))
    with pytest.raises(kind, match=says.replace("(", r"\(").replace(")", r"\)")):
        c.dataset("demo")
