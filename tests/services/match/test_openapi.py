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
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/cancel",
        "/healthz",
    }
    post = paths["/v1/datasets/{name_or_id}/matches"]["post"]
    assert {"200", "202", "404", "422"} <= set(post["responses"])
    assert "application/problem+json" in post["responses"]["422"]["content"]
    assert {"Problem", "MatchRequest", "MatchJobResource"} <= set(doc["components"]["schemas"])


JOB_RESOURCE = {"/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel"}


def test_paths_do_not_collide_with_ingest() -> None:
    """One gateway routes both services by path: no (path, method) may be served by both, but
    for ``/healthz`` and the job resource both share (routed by the job id's kind prefix)."""
    ours = json.loads(render())["paths"]
    theirs = json.loads(INGEST.read_text())["paths"]
    for path in set(ours) & set(theirs):
        assert path in {"/healthz", *JOB_RESOURCE} or not set(ours[path]) & set(theirs[path]), path


def test_one_job_resource_with_the_same_verbs_and_fields() -> None:
    """SPEC §4: ``/v1/jobs/{id}`` looks the same whichever service answers it."""
    ours, theirs = json.loads(render()), json.loads(INGEST.read_text())
    for path in JOB_RESOURCE:
        assert set(ours["paths"][path]) == set(theirs["paths"][path]), path
    get_ours = {p["name"] for p in ours["paths"]["/v1/jobs/{job_id}"]["get"]["parameters"]}
    get_theirs = {p["name"] for p in theirs["paths"]["/v1/jobs/{job_id}"]["get"]["parameters"]}
    assert {"job_id", "wait", "Prefer"} <= get_ours & get_theirs
    match_job = ours["components"]["schemas"]["MatchJobResource"]["properties"]
    ingest_job = theirs["components"]["schemas"]["JobResource"]["properties"]
    common = {"id", "kind", "status", "progress", "attempts", "cancel_requested", "timings",
              "created_at", "updated_at", "started_at", "finished_at", "result", "error",
              "links"}  # fmt: skip
    assert common <= set(match_job) & set(ingest_job)
