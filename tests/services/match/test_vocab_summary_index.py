"""Vocabulary (endpoint and topk track texts), long-range summaries, and the search index built
by a Celery task (503 + Retry-After while it builds, caches of deleted datasets removed)."""

from __future__ import annotations

import itertools
import time
import warnings
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from hiddenscope_core.reader import Catalog
from hiddenscope_core.transforms import transform_values
from hiddenscope_core.writer import DatasetWriter
from hiddenscope_match.app import create_app
from hiddenscope_match.search_index import INDEX_DIR, build_index, clean_caches
from hiddenscope_match.settings import MatchSettings
from hiddenscope_service.testing import RedisServer

from tests.services.match.conftest import VOCAB, MatchStack

# ------------------------------------------------------------------------------ vocabulary


def test_vocab_pages_and_ids(client: httpx.Client) -> None:
    r = client.get("/v1/datasets/text/vocab", params={"limit": 4})
    assert r.status_code == 200, r.text
    page = r.json()
    assert page["vocab_size"] == len(VOCAB)
    assert page["ids"] == [0, 1, 2, 3]
    assert page["texts"] == VOCAB[:4]
    assert page["next_offset"] == 4
    got = list(page["texts"])
    while page.get("next_offset") is not None:
        page = client.get(
            "/v1/datasets/text/vocab", params={"limit": 4, "offset": page["next_offset"]}
        ).json()
        got += page["texts"]
    assert got == VOCAB
    r = client.get("/v1/datasets/text/vocab", params={"ids": "7,0,7,99"})
    assert r.status_code == 200, r.text
    assert r.json()["texts"] == [VOCAB[7], VOCAB[0], VOCAB[7], ""]
    assert r.json().get("next_offset") is None
    assert client.get("/v1/datasets/text/vocab", params={"ids": "1,x"}).status_code == 422
    r = client.get("/v1/datasets/rand-0/vocab")  # no vocabulary
    assert r.status_code == 404
    assert "no vocabulary" in r.json()["detail"]


def test_topk_track_carries_texts(client: httpx.Client, match_stack: MatchStack) -> None:
    text = match_stack.data.text
    r = client.get("/v1/datasets/text/tracks/pred", params={"start": 3, "end": 6})
    assert r.status_code == 200, r.text
    ids = text["topk_ids"][3:6]
    assert r.json()["texts"] == [[VOCAB[i] for i in row] for row in ids]
    r = client.get("/v1/datasets/text/tracks/pos", params={"start": 3, "end": 6})
    assert r.json().get("texts") is None


# ------------------------------------------------------------------------------ summaries


def _ref_summary(
    v: np.ndarray, a: int, b: int, bins: int
) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
    edges = np.unique(np.linspace(a, b, min(bins, b - a) + 1).round().astype(np.int64))
    mins, maxs, means = [], [], []
    for lo, hi in itertools.pairwise(edges):
        part = v[lo:hi].astype(np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN bins → NaN
            mins.append(np.nanmin(part, axis=0))
            maxs.append(np.nanmax(part, axis=0))
            means.append(np.nanmean(part, axis=0))
    return [int(x) for x in edges], np.array(mins), np.array(maxs), np.array(means)


def _arr(rows: list[list[float | None]]) -> np.ndarray:
    return np.array([[np.nan if x is None else x for x in row] for row in rows], dtype=np.float64)


def test_summary_matches_a_reference(client: httpx.Client, match_stack: MatchStack) -> None:
    text = match_stack.data.text
    v = transform_values(text["values"], "tanh")
    for a, b, bins, cells in ((0, 3000, 7, None), (3, 250, 100, "5,3"), (10, 13, 50, "3")):
        params: dict[str, object] = {"start": a, "end": b, "bins": bins}
        if cells:
            params["cells"] = cells
        r = client.get("/v1/datasets/text/layers/cell/summary", params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        sel = sorted(int(c) for c in cells.split(",")) if cells else list(range(16))
        assert body["cells"] == sel
        edges, mins, maxs, means = _ref_summary(v[:, sel], a, b, bins)
        assert body["bin_starts"] == edges
        assert body["bins"] == len(edges) - 1 == min(bins, b - a)
        np.testing.assert_allclose(_arr(body["mins"]), mins, rtol=1e-6)
        np.testing.assert_allclose(_arr(body["maxs"]), maxs, rtol=1e-6)
        np.testing.assert_allclose(_arr(body["means"]), means, rtol=1e-5, atol=1e-6)
    # the NaN at step 5 of cell 3 is skipped; a bin of only NaN is null
    r = client.get(
        "/v1/datasets/text/layers/cell/summary",
        params={"start": 5, "end": 7, "bins": 2, "cells": "3"},
    )
    assert r.json()["mins"][0] == [None]
    assert r.json()["mins"][1][0] == pytest.approx(float(v[6, 3]))
    # defaults: the whole dataset, 500 bins
    body = client.get("/v1/datasets/text/layers/cell/summary").json()
    assert (body["start"], body["end"], body["bins"]) == (0, 3000, 500)


def test_summary_float16_with_nans(client: httpx.Client, match_stack: MatchStack) -> None:
    spec = match_stack.data.specs["rand-1"]  # float16, transform none, NaNs
    layer = spec.layer("main")
    v = transform_values(layer.raw, layer.transform).astype(np.float32)
    T = v.shape[0]
    r = client.get("/v1/datasets/rand-1/layers/main/summary", params={"bins": 9})
    assert r.status_code == 200, r.text
    edges, mins, maxs, means = _ref_summary(v, 0, T, 9)
    body = r.json()
    assert body["bin_starts"] == edges
    np.testing.assert_allclose(_arr(body["mins"]), mins, rtol=1e-3)
    np.testing.assert_allclose(_arr(body["maxs"]), maxs, rtol=1e-3)
    np.testing.assert_allclose(_arr(body["means"]), means, rtol=1e-3, atol=1e-3)


def test_summary_refuses_bad_input(client: httpx.Client) -> None:
    base = "/v1/datasets/text/layers/cell/summary"
    cases = [
        ({"start": 10, "end": 5}, 422, "not inside"),
        ({"end": 3001}, 422, "not inside"),
        ({"cells": "16"}, 422, "outside layer"),
        ({"bins": 0}, 422, "bins"),
        ({"bins": 10_001}, 422, "bins is at most"),
    ]
    for params, status, words in cases:
        r = client.get(base, params=params)
        assert r.status_code == status, (params, r.text)
        assert words in str(r.json()), (params, r.text)
    assert client.get("/v1/datasets/text/layers/nope/summary").status_code == 404
    assert client.get("/v1/datasets/gone/layers/cell/summary").status_code == 404


def test_summary_cap(tmp_path: Path, redis_server: RedisServer) -> None:
    root = tmp_path / "data"
    w = DatasetWriter.create(root, "wide", n_steps=1000)
    w.add_layer("l", n_cells=8, dtype="float32", transform="none").write(
        np.zeros((1000, 8), np.float32)
    )
    w.publish()
    settings = MatchSettings(data_root=root, redis_url=redis_server.url, max_summary_values=4000)
    with TestClient(create_app(settings)) as c:
        r = c.get("/v1/datasets/wide/layers/l/summary")
        assert r.status_code == 422
        assert "over the cap of 4000" in r.json()["detail"]
        r = c.get("/v1/datasets/wide/layers/l/summary", params={"cells": "0,1,2,3"})
        assert r.status_code == 200, r.text


# ------------------------------------------------------------------------------ search index


def _write_tokens_dataset(root: Path, name: str, T: int = 500) -> str:
    w = DatasetWriter.create(root, name, n_steps=T)
    w.set_vocab(VOCAB)
    w.write_tokens(np.arange(T) % len(VOCAB))
    w.add_layer("l", n_cells=2, dtype="float32", transform="none").write(
        np.zeros((T, 2), np.float32)
    )
    return w.publish().id


def test_search_answers_503_while_the_index_is_built(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """No worker consumes the queue here: the API must queue the build once and say 503."""
    root = tmp_path / "data"
    ds_id = _write_tokens_dataset(root, "slow")
    settings = MatchSettings(
        data_root=root,
        redis_url=redis_server.url,
        queue=f"nobody-{ds_id}",
        search_index_wait_seconds=0.1,
        search_index_eager=False,
    )
    app = create_app(settings)
    sent: list[str] = []
    service = app.state.search
    real = service.enqueue_index
    assert real is not None

    def spy(dataset_id: str) -> None:
        sent.append(dataset_id)
        real(dataset_id)

    service.enqueue_index = spy
    with TestClient(app) as c:
        for _ in range(2):
            r = c.get("/v1/datasets/slow/search", params={"q": "the cat"})
            assert r.status_code == 503, r.text
            assert r.headers["Retry-After"] == "2"
            assert r.headers["content-type"].startswith("application/problem+json")
            assert "being built" in r.json()["detail"]
        assert sent == [ds_id]  # queued once, not per request
        assert not (root / "cache" / ds_id).exists()  # the API never builds
        # what the worker does
        from hiddenscope_match.worker import build_search_index

        assert build_search_index(ds_id, service.store, service.datasets, settings) == "built"
        r = c.get("/v1/datasets/slow/search", params={"q": "the cat"})
        assert r.status_code == 200, r.text
        assert r.json()["positions"][:2] == [0, 10]
        assert (root / "cache" / ds_id / INDEX_DIR / "offsets.npy").exists()


def test_index_is_built_by_the_worker_when_a_dataset_is_first_seen(
    match_stack: MatchStack,
) -> None:
    root = match_stack.data.root
    ds_id = _write_tokens_dataset(root, "fresh")
    try:
        with httpx.Client(base_url=match_stack.url("one"), timeout=60) as c:
            assert c.get("/v1/datasets/fresh/info").status_code == 200  # queues the build
            final = root / "cache" / ds_id / INDEX_DIR / "offsets.npy"
            deadline = time.monotonic() + 30
            while not final.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert final.exists(), match_stack.logs()
            r = c.get("/v1/datasets/fresh/search", params={"q": "cat sat"})
            assert r.status_code == 200, r.text
            assert r.json()["positions"][:2] == [1, 11]
    finally:
        Catalog(root).delete("fresh")


def test_caches_of_deleted_datasets_are_removed(tmp_path: Path) -> None:
    root = tmp_path / "data"
    keep = _write_tokens_dataset(root, "keep")
    gone = _write_tokens_dataset(root, "gone")
    cache = root / "cache"
    catalog = Catalog(root)
    for name in ("keep", "gone"):
        build_index(catalog.get(name), cache)
    catalog.delete("gone")
    live = {m.id for m in catalog.list()}
    assert clean_caches(cache, live, grace_seconds=3600) == []  # too recent: kept
    assert clean_caches(cache, live, grace_seconds=0) == [gone]
    assert sorted(p.name for p in cache.iterdir()) == [keep]
