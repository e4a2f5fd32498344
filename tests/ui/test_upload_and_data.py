"""Against the real stack: the upload form publishes a dataset, a failed match job shows its
problem, top-K tracks show words (not ``#id``), long ranges use the server's summary endpoint,
and a phrase search waits while the search index is being built."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
from hiddenscope_match.matches import JOB_KIND, JOB_PREFIX
from hiddenscope_service.jobs import JobStore
from hiddenscope_ui import api
from streamlit.testing.v1 import AppTest

from tests.ui.conftest import page_text as _text
from tests.ui.stack import VOCAB, UiStack

App = Callable[..., AppTest]

MANIFEST = """\
name: uploaded
description: uploaded through the UI form
layers:
  - {name: cell_l1, source: {file: states.npy}, transform: tanh}
tokens: {source: {file: tokens.txt}}
"""


def test_upload_form_publishes_a_dataset(app: App, ui_stack: UiStack) -> None:
    T, D = 120, 6
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(3).normal(0, 1, (T, D)).astype(np.float32))
    words = [VOCAB[i % len(VOCAB)] for i in range(T)]
    tokens = ("\n".join(words) + "\n").encode()
    at = app("datasets")
    assert not at.exception
    at.text_area(key="up-manifest").input(MANIFEST)
    at.file_uploader(key="up-files").set_value(
        [
            ("states.npy", buf.getvalue(), "application/octet-stream"),
            ("tokens.txt", tokens, "text/plain"),
        ]
    )
    at.run()
    upload = next(b for b in at.button if b.label == "Upload")
    assert not upload.disabled
    upload.click().run()
    try:
        assert not at.exception, at.exception
        assert not at.error, [e.value for e in at.error]
        deadline = time.monotonic() + 90
        while "published **uploaded**" not in _text(at) and time.monotonic() < deadline:
            assert not at.error, ([e.value for e in at.error], ui_stack.logs())
            time.sleep(0.5)
            at.run()
        assert "published **uploaded** (120 steps)" in _text(at), (_text(at), ui_stack.logs())
        assert not at.exception
        # the catalog shows it, and the match service reads it
        api.list_datasets.clear()
        at.run()
        assert "uploaded" in list(at.dataframe[0].value["name"])
        info = httpx.get(f"{ui_stack.url}/v1/datasets/uploaded/info", timeout=30).json()
        assert info["n_steps"] == T
        assert info["layers"][0]["info"]["n_cells"] == D
    finally:
        httpx.delete(f"{ui_stack.url}/v1/datasets/uploaded", timeout=30)
        api.list_datasets.clear()


def test_upload_form_reports_a_refused_manifest(app: App) -> None:
    at = app("datasets")
    at.text_area(key="up-manifest").input("name: [unclosed")
    next(b for b in at.button if b.label == "Upload").click().run()
    assert not at.exception
    text = _text(at)
    assert "upload refused" in text, text


def test_failed_match_job_shows_its_problem(app: App, ui_stack: UiStack) -> None:
    assert ui_stack.redis is not None
    store = JobStore.from_url(ui_stack.redis.url, prefix=JOB_PREFIX)
    job, _ = store.create(
        JOB_KIND, {"dataset_id": str(ui_stack.demo["id"]), "n_shards": 1}, progress_total=1
    )
    assert store.fail(
        job.id,
        {
            "type": "about:blank",
            "title": "Internal error",
            "status": 500,
            "detail": "shard 0 could not read the layer",
        },
    )
    at = app("match", dataset="demo", layer="cell_l1", cells="3,7,11", job=job.id)
    assert not at.exception
    errors = [str(e.value) for e in at.error]
    assert any(
        "match failed" in e and "The job failed: shard 0 could not read the layer" in e
        for e in errors
    ), errors
    assert not len(at.dataframe)  # no results table
    assert any(b.label == "Retry" for b in at.button)


def _plot_texts(at: AppTest) -> str:
    return "\n".join(str(c.proto.spec) for c in at.get("plotly_chart"))


def test_topk_track_shows_words(app: App, ui_stack: UiStack) -> None:
    c = api.HiddenScopeApi(ui_stack.url)
    tw = c.track("demo", "next", 20, 30)
    assert len(tw["texts"]) == 10
    assert all(t == [VOCAB[i] for i in ids] for t, ids in zip(tw["texts"], tw["ids"], strict=True))
    at = app("select", dataset="demo", pos="20", tracks="next")
    assert not at.exception
    assert not at.error, [e.value for e in at.error]
    spec = json.loads(_plot_texts(at))
    heat = [t for t in spec["data"] if t.get("type") == "heatmap" and t.get("text")]
    cells = {w for t in heat for row in t["text"] for w in row}
    assert cells & set(VOCAB)
    assert not any(str(w).startswith("#") for w in cells), sorted(cells)[:20]


def test_topk_words_from_the_vocab_endpoint(
    ui_stack: UiStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An API that sends ids only: the UI looks them up with GET /vocab?ids=."""
    c = api.HiddenScopeApi(ui_stack.url)
    real = c.get_json
    seen: list[str] = []

    def without_texts(path: str, **params: Any) -> Any:
        seen.append(path)
        body = real(path, **params)
        if "/tracks/" in path and isinstance(body, dict):
            body.pop("texts", None)
        return body

    monkeypatch.setattr(c, "get_json", without_texts)
    tw = c.track("demo", "next", 100, 140)
    assert any(p.endswith("/vocab") for p in seen), seen
    assert all(t == [VOCAB[i] for i in ids] for t, ids in zip(tw["texts"], tw["ids"], strict=True))


def test_long_range_uses_the_server_summary(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the UI binned the states itself")

    monkeypatch.setattr(api.HiddenScopeApi, "_client_summary", refuse)
    api.summary.clear()
    at = app("select", dataset="demo", pos="0", cw="0.2")  # 6000 steps
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert "per-bin min..max" in "\n".join(str(c.value) for c in at.caption)


def test_search_retries_while_the_index_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) < 3:
            return httpx.Response(
                503,
                headers={"Retry-After": "0", "Content-Type": "application/problem+json"},
                json={"title": "Service Unavailable", "status": 503, "detail": "being built"},
            )
        return httpx.Response(200, json={"query": ["a", "b"], "positions": [4, 9], "total": 2})

    c = api.HiddenScopeApi("http://api.test")
    c.http = httpx.Client(base_url="http://api.test", transport=httpx.MockTransport(handler))
    assert c.search("demo", "a b") == [{"start": 4, "end": 6}, {"start": 9, "end": 11}]
    assert len(calls) == 3
    # no Retry-After: a 503 is reported at once
    c.http = httpx.Client(
        base_url="http://api.test",
        transport=httpx.MockTransport(lambda r: httpx.Response(503, json={"detail": "down"})),
    )
    with pytest.raises(api.ApiUnavailable, match="down"):
        c.search("demo", "a b")
