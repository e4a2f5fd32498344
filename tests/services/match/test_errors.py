"""Bad input is a 4xx problem (RFC 9457), never a 500."""

from __future__ import annotations

import httpx
import pytest

from tests.services.match.helpers import MAX_WINDOW_STEPS, MAX_WINDOW_VALUES

PROBLEM = "application/problem+json"

CASES: list[tuple[str, str, dict[str, object] | None, dict[str, object] | None, int]] = [
    # method, path, params, json body, status
    ("GET", "/v1/datasets/nope/info", None, None, 404),
    ("GET", "/v1/datasets/..%2F..%2Fetc/info", None, None, 404),
    ("GET", "/v1/datasets/text/layers/nope/states", {"start": 0, "end": 5}, None, 404),
    ("GET", "/v1/datasets/text/tracks/nope", {"start": 0, "end": 5}, None, 404),
    (
        "GET",
        "/v1/datasets/text/layers/cell/states",
        {"start": 0, "end": 5, "cells": "0,16"},
        None,
        422,
    ),
    (
        "GET",
        "/v1/datasets/text/layers/cell/states",
        {"start": 0, "end": 5, "cells": "a,b"},
        None,
        422,
    ),
    ("GET", "/v1/datasets/text/layers/cell/states", {"start": 2990, "end": 3001}, None, 422),
    ("GET", "/v1/datasets/text/layers/cell/states", {"start": 5, "end": 5}, None, 422),
    ("GET", "/v1/datasets/text/layers/cell/states", {"start": -1, "end": 5}, None, 422),
    ("GET", "/v1/datasets/text/layers/cell/states", {"sequence": "doc-z"}, None, 404),
    (
        "GET",
        "/v1/datasets/text/layers/cell/states",
        {"sequence": "doc-a", "offset": 990, "length": 20},
        None,
        422,
    ),
    ("GET", "/v1/datasets/text/tokens", {"start": 0, "end": MAX_WINDOW_STEPS + 1}, None, 422),
    (
        "GET",
        "/v1/datasets/text/layers/cell/states",
        {"start": 0, "end": MAX_WINDOW_VALUES // 16 + 1},
        None,
        422,
    ),
    ("GET", "/v1/datasets/text/search", None, None, 422),
    ("GET", "/v1/datasets/text/search", {"ids": "x y"}, None, 422),
    ("GET", "/v1/datasets/rand-0/search", {"q": "the"}, None, 404),  # no tokens
    ("POST", "/v1/datasets/text/select", None, {"layer": "cell", "start": 990, "end": 1010}, 422),
    ("POST", "/v1/datasets/text/select", None, {"layer": "cell", "start": 0, "end": 3001}, 422),
    ("POST", "/v1/datasets/text/select", None, {"layer": "nope", "start": 0, "end": 2}, 404),
    ("POST", "/v1/datasets/text/matches", None, {"layer": "cell", "cells": [0, 16]}, 422),
    ("POST", "/v1/datasets/text/matches", None, {"layer": "cell", "cells": [-1]}, 422),
    ("POST", "/v1/datasets/text/matches", None, {"layer": "cell", "cells": []}, 422),
    ("POST", "/v1/datasets/text/matches", None, {"layer": "nope", "cells": [0]}, 404),
    ("POST", "/v1/datasets/nope/matches", None, {"layer": "cell", "cells": [0]}, 404),
    ("POST", "/v1/datasets/text/matches", None, {"layer": "cell"}, 422),
    (
        "POST",
        "/v1/datasets/text/matches",
        None,
        {"layer": "cell", "cells": [0], "range": [0, 2]},
        422,
    ),
    ("POST", "/v1/datasets/text/matches", None, {"layer": "cell", "range": [990, 1010]}, 422),
    ("POST", "/v1/datasets/text/matches", None, {"layer": "cell", "range": [2990, 3010]}, 422),
    ("POST", "/v1/datasets/text/matches", None, {"layer": "cell", "range": [5, 5]}, 422),
    (
        "POST",
        "/v1/datasets/text/matches",
        None,
        {"layer": "cell", "cells": [0], "search_start": 10, "search_end": 4000},
        422,
    ),
    (
        "POST",
        "/v1/datasets/text/matches",
        None,
        {"layer": "cell", "cells": [0], "top_k": 5000},
        422,
    ),
    (
        "POST",
        "/v1/datasets/text/matches",
        None,
        {"layer": "cell", "cells": [0], "context": {"left": 10_000}},
        422,
    ),
    (
        "POST",
        "/v1/datasets/text/matches",
        None,
        {"layer": "cell", "cells": [0], "context": {"tracks": ["nope"]}},
        404,
    ),
    ("POST", "/v1/datasets/text/matches", None, {"layer": "cell", "cells": [0], "bogus": 1}, 422),
    ("GET", "/v1/jobs/match-unknown", None, None, 404),
    ("POST", "/v1/jobs/match-unknown/cancel", None, None, 404),
    ("DELETE", "/v1/jobs/match-unknown", None, None, 404),
    ("GET", "/v1/jobs/x", {"page_token": "!!!"}, None, 404),
    ("GET", "/v1/jobs/match-x", {"wait": -1}, None, 422),
]


@pytest.mark.parametrize(("method", "path", "params", "body", "status"), CASES)
def test_bad_input(
    client: httpx.Client,
    method: str,
    path: str,
    params: dict[str, object] | None,
    body: dict[str, object] | None,
    status: int,
) -> None:
    r = client.request(method, path, params=params, json=body)  # type: ignore[arg-type]
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    problem = r.json()
    assert problem["status"] == status
    assert problem["detail"]


@pytest.mark.parametrize("raw", [b'{"layer": "cell", "cells": [0], "threshold": NaN}',
                                 b'{"layer": "cell", "cells": [0], "threshold": Infinity}',
                                 b'{"layer": "cell", "cells": [0]', b"not json",
                                 b'{"layer": "cell", "cells": "0"}'])  # fmt: skip
def test_malformed_or_nan_bodies(client: httpx.Client, raw: bytes) -> None:
    for path in ("/v1/datasets/text/matches", "/v1/datasets/text/select"):
        r = client.post(path, content=raw, headers={"Content-Type": "application/json"})
        assert r.status_code == 422, r.text
        assert r.headers["content-type"].startswith(PROBLEM)


def test_duplicate_cells_are_deduplicated(client: httpx.Client) -> None:
    r = client.post(
        "/v1/datasets/text/matches",
        json={"layer": "cell", "cells": [3, 1, 3, 1], "top_k": 3},
        params={"wait": 30},
    )
    assert r.status_code == 200, r.text
    assert r.json()["result"]["query"]["cells"] == [1, 3]


def test_bad_page_token(client: httpx.Client) -> None:
    r = client.post(
        "/v1/datasets/text/matches", json={"layer": "cell", "cells": [2]}, params={"wait": 30}
    )
    assert r.status_code == 200
    for token in ("!!!", "e30", "eyJqIjogIngiLCAibyI6IDF9"):
        r2 = client.get(r.headers["location"], params={"page_token": token})
        assert r2.status_code == 422, r2.text
        assert r2.headers["content-type"].startswith(PROBLEM)


def test_an_ingest_job_id_is_a_404_naming_the_ingest_service(client: httpx.Client) -> None:
    r = client.get("/v1/jobs/ingest-AAAAAAAAAAAAAAAAAAAAAA")
    assert r.status_code == 404
    assert "ingest service" in r.json()["detail"]
