"""The committed OpenAPI document matches the app.

Regenerate with ``python -m hiddenscope_ingest.openapi``."""

from __future__ import annotations

import json
from pathlib import Path

from hiddenscope_ingest.openapi import render

SCHEMA = Path(__file__).resolve().parents[3] / "schemas" / "ingest.openapi.json"


def test_openapi_has_not_drifted() -> None:
    assert SCHEMA.exists(), "run: python -m hiddenscope_ingest.openapi"
    assert SCHEMA.read_text() == render(), (
        "schemas/ingest.openapi.json is out of date: run python -m hiddenscope_ingest.openapi"
    )


def test_openapi_documents_the_contract() -> None:
    doc = json.loads(render())
    paths = doc["paths"]
    assert set(paths) >= {"/v1/datasets", "/v1/datasets/{name_or_id}", "/v1/jobs/{job_id}",
                          "/v1/jobs/{job_id}/cancel", "/healthz"}  # fmt: skip
    post = paths["/v1/datasets"]["post"]
    assert set(post["requestBody"]["content"]) == {"multipart/form-data", "application/json"}
    assert "202" in post["responses"]
    for status in ("403", "409", "413", "415", "422"):
        assert "application/problem+json" in post["responses"][status]["content"]
    assert {"Problem", "PathIngestRequest", "IngestManifest", "JobResource"} <= set(
        doc["components"]["schemas"]
    )
