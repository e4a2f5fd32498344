"""The whole product as local processes, started by the runner from the compose file
(``hiddenscope_stack``), driven over HTTP through the gateway only: upload the demo dataset →
ingest job → select → match job → result; then every process is gone after ``down()``.

Needs a ``redis-server`` binary (``make setup`` installs it), except
``test_embedded_redis_runs_the_workers``, which hides it and runs on the embedded fallback.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from hiddenscope_client import HiddenScopeClient
from hiddenscope_stack.demo import default_demo_dir, upload_dataset
from hiddenscope_stack.runner import Stack

HAS_MATCH = importlib.util.find_spec("hiddenscope_match.app") is not None


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state = tmp_path_factory.mktemp("stack")
    # one pool process per worker: the machine running the suite may have two cores
    conc = {
        "HIDDENSCOPE_INGEST_WORKER_CONCURRENCY": "1",
        "HIDDENSCOPE_MATCH_WORKER_CONCURRENCY": "1",
    }
    old = {k: os.environ.get(k) for k in conc}
    os.environ.update(conc)
    try:
        s = Stack(state_dir=state, free_ports=True, log=lambda _: None, start_timeout=120)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    s.up()
    try:
        yield s
    finally:
        s.down()


def test_every_service_is_up(stack: Stack) -> None:
    started = {svc.spec.name for svc in stack.running}
    expected = {"redis", "ingest-api", "ingest-worker", "gateway"}
    if HAS_MATCH:
        expected |= {"match-api", "match-worker"}
    assert expected <= started, f"skipped: {stack.skipped}"
    urls = stack.urls
    assert httpx.get(urls["gateway"] + "/livez").status_code == 200
    if HAS_MATCH:
        health = httpx.get(urls["gateway"] + "/healthz").json()
        assert health == {"status": "ok", "upstreams": {"ingest": True, "match": True}}
    if "ui" in started:
        assert httpx.get(urls["ui"] + "/_stcore/health").status_code == 200


def test_upload_select_match_through_the_gateway(stack: Stack) -> None:
    base = stack.urls["gateway"]
    with HiddenScopeClient(base, timeout=60) as api:
        job = upload_dataset(api, default_demo_dir(), timeout=120)
    assert job.result is not None
    dataset = job.result["dataset"]
    with httpx.Client(base_url=base, timeout=60) as client:
        assert dataset["name"] == "parens"
        got = client.get("/v1/datasets/parens").raise_for_status().json()
        assert got["n_steps"] == 20_000
        assert {d["name"] for d in client.get("/v1/datasets").json()["datasets"]} >= {"parens"}
        if not HAS_MATCH:
            pytest.skip("hiddenscope_match is not in this checkout: select/match not tested")
        # select "( 4" where the level rises to 4 (found with the match service's search)
        found = client.get("/v1/datasets/parens/search", params={"q": "( 4", "limit": 50})
        levels = np.load(default_demo_dir() / "nesting.npy")
        a = next(p for p in found.raise_for_status().json()["positions"] if levels[p] == 4)
        sel = client.post(
            "/v1/datasets/parens/select",
            json={"layer": "cell_l2", "start": a, "end": a + 2, "threshold": 0.3},
        )
        cells = sel.raise_for_status().json()["cells"]
        assert cells
        r = client.post(
            "/v1/datasets/parens/matches",
            json={"layer": "cell_l2", "cells": cells, "threshold": 0.3, "top_k": 50},
        )
        assert r.status_code in (200, 202), r.text
        location = r.headers["location"]
        assert location.startswith("/v1/jobs/match-")
        job = r.json()
        while job["status"] not in ("succeeded", "failed", "cancelled"):
            job = client.get(location, params={"wait": 20}).raise_for_status().json()
        assert job["status"] == "succeeded", job
        hits = job["result"]["hits"]
        assert len(hits) == 50
        at_four = np.mean([np.mean(levels[h["start"] : h["end"]] == 4) >= 0.9 for h in hits])
        assert at_four >= 0.8


def test_one_job_resource_through_the_gateway(stack: Stack) -> None:
    """Both kinds of job answer at ``/v1/jobs/{id}`` on the gateway; unknown ids are 404s."""
    base = stack.urls["gateway"]
    with httpx.Client(base_url=base, timeout=60) as client:
        for job_id in ("match-AAAAAAAAAAAAAAAAAAAAAA", "ingest-AAAAAAAAAAAAAAAAAAAAAA", "x"):
            r = client.get(f"/v1/jobs/{job_id}")
            assert r.status_code == 404, r.text
            assert r.headers["content-type"].startswith("application/problem+json")
        assert client.get("/v1/match-jobs/x").status_code == 404  # the old path is gone


def test_unknown_path_is_a_problem(stack: Stack) -> None:
    r = httpx.get(stack.urls["gateway"] + "/v1/nothing-here")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")


def test_down_stops_every_process(tmp_path: Path) -> None:
    s = Stack(state_dir=tmp_path, free_ports=True, log=lambda _: None, only=["ingest-api"])
    s.up()
    procs = [svc.process for svc in s.running if svc.process is not None]
    assert {svc.spec.name for svc in s.running} == {"redis", "ingest-api"}
    s.down()
    for p in procs:
        assert not p.alive()
        with pytest.raises(ProcessLookupError):
            os.killpg(p.pid, 0)


_TASK_DONE = re.compile(r"Task (ingest\.convert|match\.run_shard)\[[0-9a-f-]+\] succeeded")


@pytest.mark.skipif(not HAS_MATCH, reason="hiddenscope_match is not in this checkout")
def test_embedded_redis_runs_the_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``redis-server`` on ``PATH``: the runner falls back to the embedded fakeredis server
    (:mod:`hiddenscope_stack.embedded_redis`), and the real Celery workers of both services run
    upload → ingest → match through the gateway against it."""
    venv_bin = str(Path(sys.executable).parent)
    dirs = [d for d in os.environ["PATH"].split(os.pathsep) if d and d != venv_bin]
    dirs = [d for d in dirs if not (Path(d) / "redis-server").exists()]
    monkeypatch.setenv("PATH", os.pathsep.join([venv_bin, *dirs]))
    monkeypatch.setenv("HIDDENSCOPE_INGEST_WORKER_CONCURRENCY", "1")
    monkeypatch.setenv("HIDDENSCOPE_MATCH_WORKER_CONCURRENCY", "1")
    said: list[str] = []
    s = Stack(state_dir=tmp_path, free_ports=True, log=said.append, start_timeout=120,
              only=["gateway", "ingest-worker", "match-worker"])  # fmt: skip
    s.up()
    try:
        redis = next(svc for svc in s.running if svc.spec.name == "redis")
        assert "hiddenscope_stack.embedded_redis" in redis.argv
        assert any("embedded fakeredis" in line for line in said)
        with HiddenScopeClient(s.urls["gateway"], timeout=60) as api:
            job = upload_dataset(api, default_demo_dir(), timeout=120)
        assert job.id.startswith("ingest-")
        with httpx.Client(base_url=s.urls["gateway"], timeout=60) as client:
            body = {"layer": "cell_l2", "range": [89, 91], "top_k": 5}
            r = client.post("/v1/datasets/parens/matches", json=body, params={"wait": 30})
            assert r.status_code == 200, r.text
            match = r.json()
            assert match["status"] == "succeeded", match
            assert r.headers["location"] == f"/v1/jobs/{match['id']}"
            hits = match["result"]["hits"]
            assert (hits[0]["start"], hits[0]["end"]) == (14816, 14825)  # README's example
            page = client.get(r.headers["location"], params={"page_size": 2}).json()
            assert [h["rank"] for h in page["result"]["hits"]] == [0, 1]
            assert page["links"]["next"].startswith(r.headers["location"] + "?page_token=")
            assert client.post(r.headers["location"] + "/cancel").status_code == 409
        for name in ("ingest-worker", "match-worker"):
            worker = next(svc for svc in s.running if svc.spec.name == name)
            assert worker.process is not None
            assert _TASK_DONE.search(worker.process.log(1 << 30)), worker.process.log()
    finally:
        s.down()
