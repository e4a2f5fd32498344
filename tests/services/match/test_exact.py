"""Exactness through HTTP: every match answered by the service (sharded over real Celery worker
processes, merged from Redis) equals the brute-force reference of SPEC §2
(``tests/core/reference.py``), for several shard sizes and with one and two worker processes."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest

from tests.core.datagen import DataSpec
from tests.core.reference import ref_match, ref_select
from tests.services.helpers import wait_job
from tests.services.match.helpers import SHARD_SIZES, MatchStack

HIT_FIELDS = (
    "start", "end", "length", "sequence", "sequence_name", "intersection", "union", "jaccard",
    "missing", "extra", "level",
)  # fmt: skip


def _queries(spec: DataSpec, seed: int, n: int) -> list[dict[str, Any]]:
    """Random match requests over both layers: on- and off-grid thresholds, off extents, length
    limits, search ranges, stats, duplicate cells and ranges to select S1 from."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        layer = spec.layers[i % len(spec.layers)]
        D = layer.raw.shape[1]
        grid = layer.thresholds or [0.3]
        theta = float(rng.choice([*grid, 0.3, 0.2998046875, 0.31, 0.0]))
        body: dict[str, Any] = {
            "layer": layer.name,
            "threshold": theta,
            "left_off": int(rng.integers(0, 3)),
            "right_off": int(rng.integers(0, 3)),
            "min_length": int(rng.integers(1, 4)),
            "top_k": int(rng.choice([3, 20, 1000])),
            "stats": bool(rng.random() < 0.5),
        }
        if rng.random() < 0.3:
            body["max_length"] = body["min_length"] + int(rng.integers(0, 10))
        if rng.random() < 0.3:
            a = int(rng.integers(0, spec.n_steps - 1))
            body["search_start"] = a
            body["search_end"] = int(rng.integers(a + 1, spec.n_steps + 1))
        if rng.random() < 0.25:
            # select S1 server-side from a range inside one sequence
            lo, hi = spec.bounds()[int(rng.integers(0, len(spec.starts)))]
            a = int(rng.integers(lo, hi))
            body["range"] = [a, int(rng.integers(a + 1, min(hi, a + 4) + 1))]
        else:
            k = int(rng.integers(1, min(D, 4) + 1))
            cells = [int(c) for c in rng.choice(D, k, replace=False)]
            body["cells"] = cells + cells[:1]  # a duplicate: the server de-duplicates
        out.append(body)
    return out


def _expected(spec: DataSpec, body: dict[str, Any]) -> tuple[list[int] | None, Any]:
    layer = spec.layer(body["layer"])
    common = {
        "threshold": body["threshold"],
        "left_off": body["left_off"],
        "right_off": body["right_off"],
    }
    if "range" in body:
        sel = ref_select(
            layer.raw, layer.transform, spec.starts,  # type: ignore[arg-type]
            start=body["range"][0], end=body["range"][1], **common,
        )  # fmt: skip
        if not sel.cells:
            return None, None
        cells = sel.cells
    else:
        cells = sorted(set(body["cells"]))
    names = spec.names or [f"seq{i}" for i in range(len(spec.starts))]
    ref = ref_match(
        layer.raw, layer.transform, spec.starts,  # type: ignore[arg-type]
        cells=cells, min_length=body["min_length"], max_length=body.get("max_length"),
        top_k=body["top_k"], search_start=body.get("search_start"),
        search_end=body.get("search_end"), sequence_names=list(names), **common,
    )  # fmt: skip
    return cells, ref


_expected_cache: dict[str, tuple[list[int] | None, Any]] = {}


def _expected_cached(name: str, spec: DataSpec, body: dict[str, Any]) -> Any:
    key = f"{name} {sorted(body.items())}"
    if key not in _expected_cache:
        _expected_cache[key] = _expected(spec, body)
    return _expected_cache[key]


def _run_all(stack: MatchStack, seed: int) -> int:
    """Submit every query to every API (shard size) at once, then check each answer."""
    jobs: list[tuple[str, str, dict[str, Any], httpx.Response]] = []
    with ThreadPoolExecutor(16) as pool, httpx.Client(timeout=60) as client:
        futures = []
        for api in SHARD_SIZES:
            for j, (name, spec) in enumerate(stack.data.specs.items()):
                for body in _queries(spec, seed + 31 * j, 8):
                    url = f"{stack.url(api)}/v1/datasets/{name}/matches"
                    futures.append((api, name, body, pool.submit(client.post, url, json=body)))
        for api, name, body, fut in futures:
            jobs.append((api, name, body, fut.result()))
        checked = 0
        for api, name, body, resp in jobs:
            spec = stack.data.specs[name]
            cells, ref = _expected_cached(name, spec, body)
            what = f"api={api} dataset={name} body={body}"
            if cells is None:  # a range that selects no cell
                assert resp.status_code == 422, (what, resp.text)
                assert resp.headers["content-type"].startswith("application/problem+json")
                continue
            assert resp.status_code == 202, (what, resp.text)
            job = wait_job(client, stack.url(api) + resp.headers["location"])
            assert job["status"] == "succeeded", (what, job, stack.logs())
            assert job["progress"]["done"] == job["progress"]["total"] >= 1
            result = job["result"]
            assert result["query"]["cells"] == cells, what
            got = [{k: h[k] for k in HIT_FIELDS} for h in result["hits"]]
            want = [{k: getattr(h, k) for k in HIT_FIELDS} for h in ref.hits]
            assert got == want, what
            assert [h["rank"] for h in result["hits"]] == list(range(len(got)))
            if body["stats"]:
                stats = result["stats"]
                assert stats["n_candidates"] == ref.n_candidates, what
                assert stats["length_histogram"] == ref.length_histogram, what
                assert stats["strict_length_histogram"] == ref.strict_length_histogram, what
            checked += 1
    return checked


_SHARD_DONE = re.compile(r"Task match\.run_shard\[[0-9a-f-]+\] succeeded")


def test_exact_one_worker(match_stack: MatchStack) -> None:
    assert len(match_stack.workers) == 1
    assert _run_all(match_stack, seed=1) > 30


def test_exact_two_workers(match_stack: MatchStack) -> None:
    """Two worker processes on one queue (``match``, one Redis, one data directory) share the
    shard tasks of the same jobs, and every answer is still exact (docs/scale-out.md)."""
    if len(match_stack.workers) < 2:
        match_stack.add_worker()
    before = [len(w.log(tail=1 << 30)) for w in match_stack.workers]
    assert _run_all(match_stack, seed=2) > 30
    for worker, offset in zip(match_stack.workers, before, strict=True):
        ran = _SHARD_DONE.findall(worker.log(tail=1 << 30)[offset:])
        assert ran, f"{worker.extra['node']} ran no shard task:\n{match_stack.logs()}"


@pytest.mark.parametrize("api", list(SHARD_SIZES))
def test_wait_answers_200_with_the_result(match_stack: MatchStack, api: str) -> None:
    spec = match_stack.data.specs["rand-0"]
    body = {"layer": "main", "cells": [0, 1, 2], "threshold": 0.3, "top_k": 10}
    with httpx.Client(base_url=match_stack.url(api), timeout=60) as client:
        r = client.post("/v1/datasets/rand-0/matches", json=body, params={"wait": 30})
        assert r.status_code == 200, r.text
        job = r.json()
        assert job["status"] == "succeeded"
        assert r.headers["location"] == f"/v1/jobs/{job['id']}"
        assert job["id"].startswith("match-")
        n_shards = -(-spec.n_steps // SHARD_SIZES[api])
        assert job["progress"] == {"done": n_shards, "total": n_shards}
        _cells, ref = _expected(spec, {**body, "left_off": 1, "right_off": 0, "min_length": 2})
        assert [h["start"] for h in job["result"]["hits"]] == [h.start for h in ref.hits]
        t = job["timings"]
        assert t["total_seconds"] is not None
        assert t["total_seconds"] >= t["running_seconds"]
        # Prefer: wait=N does the same
        r = client.post(
            "/v1/datasets/rand-0/matches", json=body, headers={"Prefer": "respond-async, wait=30"}
        )
        assert r.status_code == 200, r.text
        assert r.headers["preference-applied"] == "wait=30"
