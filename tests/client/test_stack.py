"""The client against the real stack (through the gateway): every resource parses with the API's
field names, windows become numpy arrays of the right shapes (JSON and Arrow alike, equal to the
core's reading), failures are typed errors with the problem's fields, and jobs can be waited
for."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hiddenscope_client import (
    BadRequest,
    ContextOptions,
    HiddenScopeClient,
    JobFailed,
    MatchRequest,
    NotFound,
    SelectQuery,
    UploadFile,
)
from hiddenscope_core.reader import open_dataset
from hiddenscope_service.jobs import JobStore

from tests.ui.helpers import PLANTED_CELLS, VOCAB, D, T, UiStack


def test_catalog_and_info(client: HiddenScopeClient, stack: UiStack) -> None:
    assert client.health()
    listed = {d.name: d for d in client.list_datasets()}
    demo = listed["demo"]
    assert demo.id == stack.demo["id"]
    assert (demo.n_steps, demo.n_sequences, demo.has_tokens) == (T, 4, True)
    assert [x.name for x in demo.layers] == ["cell_l1", "hidden_l1"]
    assert client.manifest("demo") == demo
    info = client.info("demo")
    assert (info.id, info.n_steps, info.vocab_size) == (demo.id, T, len(VOCAB))
    layer = info.layer("cell_l1")
    assert layer is not None
    assert (layer.n_cells, layer.transform, layer.dtype) == (D, "tanh", "float32")
    assert layer.thresholds
    assert info.layer("nope") is None
    pos = info.track("pos")
    assert pos is not None
    assert (pos.kind, pos.labels) == ("discrete", ["NOUN", "VERB", "DET", "ADJ"])
    seqs = client.sequences("demo")
    assert [(s.index, s.name, s.start, s.end) for s in seqs] == [
        (0, "doc-a", 0, 1500), (1, "doc-b", 1500, 3000), (2, "doc-c", 3000, 4500),
        (3, "doc-d", 4500, T),
    ]  # fmt: skip


def test_windows_are_numpy_of_the_right_shape(client: HiddenScopeClient, stack: UiStack) -> None:
    ds = open_dataset(stack.data_root / "datasets" / str(stack.demo["id"]))
    w = client.states("demo", "cell_l1", 1490, 1530)
    assert (w.layer, w.start, w.end, w.sequence, w.cells) == (
        "cell_l1",
        1490,
        1530,
        0,
        list(range(D)),
    )
    assert w.values.dtype == np.float32
    assert w.values.shape == (40, D)
    assert np.array_equal(w.values, ds.window("cell_l1", 1490, 1530))
    some = client.states("demo", "cell_l1", 100, 103, cells=[11, 3, 7])
    assert some.values.shape == (3, 3)
    assert np.array_equal(some.values, ds.window("cell_l1", 100, 103, cells=some.cells))
    arrow = client.states("demo", "cell_l1", 1490, 1530, arrow=True)
    assert (arrow.start, arrow.end, arrow.cells, arrow.sequence) == (1490, 1530, w.cells, None)
    assert np.array_equal(arrow.values, w.values)
    summ = client.summary("demo", "hidden_l1", 0, T, 7)
    assert (summ.bins, len(summ.bin_starts), summ.bin_starts[-1]) == (7, 8, T)
    for m in (summ.mins, summ.maxs, summ.means):
        assert m.shape == (7, D // 2)
        assert m.dtype == np.float32
    assert np.all(summ.mins <= summ.means)
    assert np.all(summ.means <= summ.maxs)


def test_tokens_tracks_and_vocab(client: HiddenScopeClient) -> None:
    toks = client.tokens("demo", 20, 23)
    assert toks.texts == ["a", "little", "prince"]
    assert toks.ids == [VOCAB.index(w) for w in toks.texts]
    assert client.vocab("demo", [0, 15, 999]) == {0: "the", 15: "prince", 999: ""}
    pos = client.track("demo", "pos", 0, 10)
    assert pos.labels == ["NOUN", "VERB", "DET", "ADJ"]
    assert pos.label is not None
    assert len(pos.label) == 10
    assert pos.value is None
    loss = client.track("demo", "loss", 0, 10)
    assert loss.value is not None
    assert len(loss.value) == 10
    nxt = client.track("demo", "next", 0, 10)
    assert nxt.ids is not None
    assert nxt.texts == [[VOCAB[i] for i in row] for row in nxt.ids]
    summ = client.track_summary("demo", "pos", 0, T, 5)
    assert summ.label_counts is not None
    assert summ.unlabelled is not None
    assert [sum(c) + u for c, u in zip(summ.label_counts, summ.unlabelled, strict=True)] == [
        b - a for a, b in zip(summ.bin_starts, summ.bin_starts[1:], strict=False)
    ]
    oc = client.on_count_summary("demo", "cell_l1", PLANTED_CELLS, 0.3, 0, T, 5)
    assert (oc.cells, oc.bins, max(oc.maxs)) == (list(PLANTED_CELLS), 5, len(PLANTED_CELLS))


def test_select_search_and_match(client: HiddenScopeClient, stack: UiStack) -> None:
    planted = list(stack.demo["planted"])  # type: ignore[call-overload]
    p = planted[1]
    sel = client.select(
        "demo",
        SelectQuery(layer="cell_l1", start=p, end=p + 3, window_start=p - 5, window_end=p + 5),
    )
    assert set(PLANTED_CELLS) <= set(sel.cells)
    assert (sel.window_start, sel.window_end, len(sel.counts)) == (p - 5, p + 5, 10)
    found = client.search("demo", "a little prince", limit=1000, wait_seconds=60)
    assert found.query == ["a", "little", "prince"]
    assert found.positions == planted
    assert found.total == len(planted)
    request = MatchRequest(
        layer="cell_l1", cells=PLANTED_CELLS, top_k=5, context=ContextOptions(left=1, right=4)
    )
    job = client.start_match("demo", request, wait=60)
    assert job.status == "succeeded"
    assert job.dataset_id == stack.demo["id"]
    assert job.result is not None
    assert job.result.n_hits >= 5
    assert [h.rank for h in job.result.hits] == [0, 1, 2, 3, 4]
    page = client.match_job(job.id, page_size=2, context_counts=True, context_tracks=["pos"])
    assert page.result is not None
    hits = page.result.hits
    assert len(hits) == 2
    assert page.result.next_page_token
    ctx = hits[0].context
    assert ctx is not None
    assert ctx.tokens is not None
    assert ctx.counts is not None
    assert ctx.tracks is not None
    assert len(ctx.tokens) == len(ctx.counts) == ctx.end - ctx.start
    assert ctx.tracks["pos"].label is not None


def test_problems_are_typed_errors(client: HiddenScopeClient) -> None:
    with pytest.raises(NotFound) as gone:
        client.info("no-such-dataset")
    err = gone.value
    assert err.status == 404
    assert err.title
    assert err.detail is not None
    assert "no-such-dataset" in err.detail
    assert err.message == err.detail
    with pytest.raises(BadRequest) as bad:
        client.states("demo", "cell_l1", 10, 5)
    assert bad.value.status == 422
    assert bad.value.detail
    with pytest.raises(NotFound):
        client.track("demo", "nope", 0, 10)
    with pytest.raises(NotFound):
        client.job("match-nope")
    with pytest.raises(NotFound):
        client.job("ingest-nope")


def _upload(client: HiddenScopeClient, name: str, n_tokens: int) -> str:
    T_up, D_up = 50, 4
    states = io.BytesIO()
    np.save(states, np.random.default_rng(5).normal(0, 1, (T_up, D_up)).astype(np.float32))
    tokens = ("\n".join(VOCAB[i % len(VOCAB)] for i in range(n_tokens)) + "\n").encode()
    manifest = (
        f"name: {name}\nlayers:\n  - {{name: l, source: {{file: states.npy}}}}\n"
        "tokens: {source: {file: tokens.txt}}\n"
    )
    files = [
        UploadFile("states.npy", len(states.getvalue()), io.BytesIO(states.getvalue())),
        UploadFile("tokens.txt", len(tokens), io.BytesIO(tokens)),
    ]
    job = client.upload_dataset(manifest, files)
    assert job.kind == "ingest"
    assert not job.terminal
    return job.id


def test_ingest_jobs_can_be_waited_for(client: HiddenScopeClient) -> None:
    job = client.wait_job(_upload(client, "client-up", 50), timeout=120, poll=5)
    assert job.status == "succeeded"
    assert job.result is not None
    assert job.result["dataset"]["name"] == "client-up"
    try:
        assert client.manifest("client-up").n_steps == 50
        assert client.states("client-up", "l", 0, 50).values.shape == (50, 4)
    finally:
        client.delete_dataset("client-up")
    with pytest.raises(NotFound):
        client.manifest("client-up")
    # refused at once: a typed error with the problem's fields, no job
    with pytest.raises(BadRequest, match="49 tokens but the layers have T=50 steps") as bad:
        _upload(client, "client-bad", 49)
    assert bad.value.status == 422


def test_a_failed_job_raises_its_problem(client: HiddenScopeClient, stack: UiStack) -> None:
    assert stack.redis is not None
    store = JobStore.from_url(stack.redis.url, prefix="hiddenscope:ingest")
    job, _ = store.create("ingest", {"owned": False}, progress_total=1)
    problem = {"title": "Bad upload", "status": 422, "detail": "tokens has 100 steps, states 120"}
    store.fail(job.id, problem)
    got = client.job(job.id)
    assert got.status == "failed"
    assert got.error is not None
    assert (got.error.title, got.error.status, got.error.detail) == (
        "Bad upload", 422, "tokens has 100 steps, states 120",
    )  # fmt: skip
    with pytest.raises(JobFailed, match="tokens has 100 steps, states 120") as failed:
        client.wait_job(job.id, timeout=10)
    assert (failed.value.status, failed.value.title) == (422, "Bad upload")
