"""The committed OpenAPI document matches the app.

Regenerate with ``python -m hiddenscope_match.openapi``."""

from __future__ import annotations

import json
from pathlib import Path

from hiddenscope_match.openapi import render

SCHEMA = Path(__file__).resolve().parents[3] / "schemas" / "match.openapi.json"
INGEST = SCHEMA.with_name("ingest.openapi.json")


def test_openapi_has_not_drifted() -> None:
    assert SCHEMA.exists(), "run: python -m hiddenscope_match.openapi"
    assert SCHEMA.read_text() == render(), (
        "schemas/match.openapi.json is out of date: run python -m hiddenscope_match.openapi"
    )


def test_openapi_documents_the_contract() -> None:
    doc = json.loads(render())
    paths = doc["paths"]
    assert set(paths) >= {
        "/v1/datasets/{name_or_id}/info",
        "/v1/datasets/{name_or_id}/layers/{layer}/states",
        "/v1/datasets/{name_or_id}/tokens",
        "/v1/datasets/{name_or_id}/tracks/{track}",
        "/v1/datasets/{name_or_id}/select",
        "/v1/datasets/{name_or_id}/search",
        "/v1/datasets/{name_or_id}/matches",
        "/v1/match-jobs/{job_id}",
        "/v1/match-jobs/{job_id}/cancel",
        "/healthz",
    }
    post = paths["/v1/datasets/{name_or_id}/matches"]["post"]
    assert {"200", "202", "404", "422"} <= set(post["responses"])
    assert "application/problem+json" in post["responses"]["422"]["content"]
    assert {"Problem", "MatchRequest", "MatchJobResource"} <= set(doc["components"]["schemas"])


def test_paths_do_not_collide_with_ingest() -> None:
    """One gateway routes both services: no (path, method) may be served by both."""
    ours = json.loads(render())["paths"]
    theirs = json.loads(INGEST.read_text())["paths"]
    for path in set(ours) & set(theirs):
        assert path == "/healthz" or not set(ours[path]) & set(theirs[path]), path
