"""The client against a mocked transport: every failure becomes a typed error carrying the
problem's fields, jobs live at ``/v1/jobs/{id}``, a search retries while its index builds, and
an upload is one streamed multipart body."""

from __future__ import annotations

import io
from collections.abc import Callable

import httpx
import pytest
from hiddenscope_client import (
    ApiError,
    ApiUnavailable,
    BadRequest,
    HiddenScopeClient,
    JobFailed,
    MatchRequest,
    NotFound,
    ServerError,
    UploadFile,
)

Handler = Callable[[httpx.Request], httpx.Response]


def _client(handler: Handler) -> tuple[HiddenScopeClient, list[str]]:
    seen: list[str] = []

    def wrapped(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        return handler(request)

    return HiddenScopeClient("http://api.test", transport=httpx.MockTransport(wrapped)), seen


def _job(job_id: str, status: str, **extra: object) -> dict[str, object]:
    return {
        "id": job_id,
        "kind": "match",
        "status": status,
        "progress": {"done": 1, "total": 2},
        "attempts": 1,
        "cancel_requested": False,
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:01Z",
        "timings": {"queued_seconds": 0.1},
        **extra,
    }


PROBLEM = {
    "type": "about:blank",
    "title": "Unprocessable Content",
    "status": 422,
    "detail": "cells: must be sorted",
    "instance": "/v1/datasets/demo/info",
}


@pytest.mark.parametrize(
    ("status", "kind", "says"),
    [
        (404, NotFound, "cells: must be sorted"),
        (409, BadRequest, "cells: must be sorted"),
        (422, BadRequest, "cells: must be sorted"),
        (500, ServerError, "the server failed (HTTP 500): cells: must be sorted"),
        (502, ApiUnavailable, "the API is unavailable (HTTP 502): cells: must be sorted"),
    ],
)
def test_problems_become_typed_errors(status: int, kind: type[ApiError], says: str) -> None:
    body = {**PROBLEM, "status": status}
    c, _ = _client(
        lambda r: httpx.Response(
            status, json=body, headers={"Content-Type": "application/problem+json"}
        )
    )
    with pytest.raises(kind) as got:
        c.info("demo")
    err = got.value
    assert err.message == says
    assert (err.status, err.title, err.detail) == (status, PROBLEM["title"], PROBLEM["detail"])
    assert (err.type, err.instance) == ("about:blank", PROBLEM["instance"])


def test_other_error_bodies() -> None:
    c, _ = _client(lambda r: httpx.Response(422, json={"detail": [{"loc": ["q"], "msg": "bad"}]}))
    with pytest.raises(BadRequest, match=r"^q: bad$"):
        c.tokens("demo", 0, 1)
    c, _ = _client(lambda r: httpx.Response(413, text="too large"))
    with pytest.raises(BadRequest, match="too large") as got:
        c.tokens("demo", 0, 1)
    assert got.value.detail is None
    c, _ = _client(lambda r: httpx.Response(200, text="<html>"))
    with pytest.raises(ServerError, match="other than JSON"):
        c.tokens("demo", 0, 1)
    c, _ = _client(lambda r: httpx.Response(200, json={"start": 0}))
    with pytest.raises(ServerError, match="unexpected tokens window"):
        c.tokens("demo", 0, 1)


def test_transport_failures_are_unavailable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(ApiUnavailable, match="cannot reach the API at http://api") as got:
        _client(refuse)[0].list_datasets()
    assert got.value.status is None
    with pytest.raises(ApiUnavailable, match="did not answer in time"):
        _client(slow)[0].list_datasets()
    assert not _client(refuse)[0].health()


def test_jobs_live_at_v1_jobs() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path == "/v1/datasets/demo/matches":
            return httpx.Response(202, json=_job("match-J1", "queued", dataset_id="D"))
        if request.url.path == "/v1/jobs/match-J1/cancel":
            return httpx.Response(202, json=_job("match-J1", "running", cancel_requested=True))
        if request.url.path == "/v1/jobs/match-J1":
            return httpx.Response(200, json=_job("match-J1", "running", dataset_id="D"))
        return httpx.Response(404, json={"title": "Not Found", "status": 404, "detail": "no"})

    c, seen = _client(handler)
    job = c.start_match("demo", MatchRequest(layer="l", cells=(1, 3)), wait=0.5)
    assert (job.id, job.status, job.dataset_id, job.terminal) == ("match-J1", "queued", "D", False)
    assert c.match_job("match-J1", page_size=1).status == "running"
    assert c.cancel_job("match-J1").cancel_requested
    assert seen == [
        "POST /v1/datasets/demo/matches",
        "GET /v1/jobs/match-J1",
        "POST /v1/jobs/match-J1/cancel",
    ]
    with pytest.raises(NotFound, match="no"):
        c.job("ingest-nope")


def test_wait_job_raises_the_jobs_problem() -> None:
    waits: list[str] = []
    problem = {"title": "Invalid input", "status": 422, "detail": "no layer named x"}

    def handler(request: httpx.Request) -> httpx.Response:
        waits.append(request.url.params.get("wait", ""))
        if len(waits) < 2:
            return httpx.Response(200, json=_job("ingest-1", "running"))
        return httpx.Response(200, json=_job("ingest-1", "failed", error=problem))

    c, _ = _client(handler)
    with pytest.raises(JobFailed, match="no layer named x") as got:
        c.wait_job("ingest-1", timeout=60, poll=5)
    assert (got.value.status, got.value.title) == (422, "Invalid input")
    assert waits == ["5", "5"]


def test_search_retries_while_the_index_builds() -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) < 3:
            return httpx.Response(
                503,
                headers={"Retry-After": "0", "Content-Type": "application/problem+json"},
                json={"title": "Service Unavailable", "status": 503, "detail": "being built"},
            )
        body = {"query": ["a", "b"], "token_ids": [[1], [2]], "positions": [4, 9], "total": 2}
        return httpx.Response(200, json=body)

    c, _ = _client(handler)
    got = c.search("demo", "a b", wait_seconds=5)
    assert (got.positions, got.query, got.total) == ([4, 9], ["a", "b"], 2)
    assert len(calls) == 3
    # no Retry-After: a 503 is reported at once
    c, _ = _client(lambda r: httpx.Response(503, json={"detail": "down"}))
    with pytest.raises(ApiUnavailable, match="down") as err:
        c.search("demo", "a b", wait_seconds=5)
    assert err.value.retry_after is None


def test_upload_streams_one_multipart_body() -> None:
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.read())
        assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
        assert int(request.headers["content-length"]) == len(bodies[-1])
        return httpx.Response(202, json=_job("ingest-I1", "queued", kind="ingest"))

    c, seen = _client(handler)
    progress: list[tuple[int, int]] = []
    job = c.upload_dataset(
        "name: x\n",
        [UploadFile("a.npy", 5, io.BytesIO(b"12345"))],
        on_progress=lambda sent, total: progress.append((sent, total)),
        chunk_bytes=2,
    )
    assert (job.id, job.kind) == ("ingest-I1", "ingest")
    assert seen == ["POST /v1/datasets"]
    assert b'name="manifest"' in bodies[0]
    assert b'filename="a.npy"' in bodies[0]
    assert b"\r\n12345\r\n" in bodies[0]
    assert progress[-1] == (len(bodies[0]), len(bodies[0]))
