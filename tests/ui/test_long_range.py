"""AppTest against the real stack: zoomed out past the per-step limit (a 300 000-step dataset,
more than the UI ever reads per step), the select view draws every kind of meta track and the
on-count of the selected cells per bin from the server's summaries — checked bin by bin against
the brute-force reference — and never reads a per-step track window; and a layer summary refused
as too large leaves out the cells' lines, not the rest."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from hiddenscope_client import BadRequest, HiddenScopeClient
from hiddenscope_core.build import DatasetWriter
from hiddenscope_core.models import TrackInfo
from hiddenscope_core.reader import Catalog
from hiddenscope_ui import api
from streamlit.testing.v1 import AppTest

from tests.core.reference import ref_bin_edges, ref_on_count_summary, ref_track_summary
from tests.ui.helpers import VOCAB, UiStack
from tests.ui.helpers import array as _arr
from tests.ui.helpers import page_text as _text

App = Callable[..., AppTest]

T_LONG = 300_000
"""More steps than the UI ever reads per step."""
BINS = 300
PLANTED = (0, 1, 2)
LABELS = ["exon", "intron", "intergenic"]


@pytest.fixture(scope="module")
def long_data(ui_stack: UiStack) -> Iterator[dict[str, Any]]:
    """A 300 000-step dataset "long" (4 cells; cells 0, 1, 2 on together over 3 steps every
    1000, off one step around; a discrete, a scalar and a top-K track), removed afterwards."""
    rng = np.random.default_rng(23)
    values = rng.normal(0, 0.15, (T_LONG, 4)).astype(np.float32)
    for p in range(1000, T_LONG - 10, 1000):
        values[p - 1, list(PLANTED)] = -0.9
        values[p : p + 3, list(PLANTED)] = 0.9
        values[p + 3, list(PLANTED)] = -0.9
    labels = np.repeat(rng.integers(-1, len(LABELS), T_LONG // 500), 500)
    loss = rng.gamma(2.0, 1.0, T_LONG).astype(np.float32)
    loss[rng.random(T_LONG) < 0.01] = np.nan
    p_ids = np.linspace(1, 3, len(VOCAB))
    top_ids = rng.choice(len(VOCAB), (T_LONG, 2), p=p_ids / p_ids.sum())
    w = DatasetWriter.create(ui_stack.data_root, "long", n_steps=T_LONG)
    try:
        w.set_vocab(VOCAB)
        w.write_tokens(rng.integers(0, len(VOCAB), T_LONG))
        w.add_layer("l", n_cells=4, dtype="float32", transform="none").write(values)
        w.add_track(TrackInfo(name="region", kind="discrete", labels=LABELS), labels)
        w.add_track(TrackInfo(name="loss", kind="scalar"), loss)
        w.add_track(
            TrackInfo(name="next", kind="topk", k=2),
            ids=top_ids,
            scores=np.full((T_LONG, 2), 0.5, np.float32),
        )
        w.publish()
    except BaseException:
        w.abort()
        raise
    try:
        yield {"values": values, "labels": labels, "loss": loss, "ids": top_ids}
    finally:
        Catalog(ui_stack.data_root).delete("long")
        api.list_datasets.clear()


def _figures(at: AppTest) -> list[dict[str, Any]]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def test_past_the_per_step_limit_every_track_and_the_on_count_show(
    app: App, long_data: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the UI read a per-step window")

    monkeypatch.setattr(HiddenScopeClient, "track", refuse)
    monkeypatch.setattr(HiddenScopeClient, "states", refuse)
    at = app(
        "select", dataset="long", layer="l", pos="0", cw="0.001", range="1000,1003",
        tracks="region,loss,next",
    )  # fmt: skip
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert not at.warning, [w.value for w in at.warning]
    text = _text(at)
    assert f"{T_LONG:,} steps of {T_LONG:,}" in text
    assert "3 selected cells" in text  # S1 from the select, whatever the window's length
    assert "zoom in (A+) to see them" not in text
    (fig,) = _figures(at)
    heat = {t["name"]: t for t in fig["data"] if t["type"] == "heatmap"}
    assert list(heat) == ["on-count", "region", "loss", "next"]
    edges = ref_bin_edges(0, T_LONG, BINS)
    width = np.diff(edges).astype(float)
    centres = (np.asarray(edges[:-1]) + np.asarray(edges[1:]) - 1) / 2
    for t in heat.values():
        assert np.array_equal(_arr(t["x"]), centres)

    # on-count: the most selected cells on at one step of each bin (min and mean in the text)
    ref = ref_on_count_summary(long_data["values"], "none", list(PLANTED), 0.3, edges)
    count = heat["on-count"]
    assert count["y"] == ["on-count (max)"]
    assert _arr(count["z"])[0].tolist() == ref.maxs
    assert count["zmax"] == len(PLANTED)
    assert count["text"][0][5] == f"max {ref.maxs[5]} · mean {ref.means[5]:.2f} · min {ref.mins[5]}"
    assert max(ref.maxs) == len(PLANTED)  # the planted runs

    # discrete: the share of each label present, per bin
    ref_t = ref_track_summary("discrete", long_data["labels"], edges, len(LABELS))
    counts = np.asarray(ref_t.label_counts, dtype=float)
    present = [i for i in range(len(LABELS)) if counts[:, i].any()]
    assert heat["region"]["y"] == [f"region={LABELS[i]}" for i in present]
    assert np.allclose(_arr(heat["region"]["z"]), (counts[:, present] / width[:, None]).T)

    # scalar: the bin means (NaN skipped), min and max in the text
    ref_t = ref_track_summary("scalar", long_data["loss"], edges)
    assert np.allclose(_arr(heat["loss"]["z"])[0], np.asarray(ref_t.means, dtype=float))
    m, lo, hi = ref_t.means[0], ref_t.mins[0], ref_t.maxs[0]
    assert heat["loss"]["text"][0][0] == f"mean {m:.3g} (min {lo:.3g}, max {hi:.3g})"

    # top-K: each bin's most frequent top-1 word and the share of its steps
    ref_t = ref_track_summary("topk", long_data["ids"], edges)
    assert heat["next"]["y"] == ["next top-1"]
    share = np.asarray(ref_t.mode_counts) / width
    assert np.allclose(_arr(heat["next"]["z"])[0], share)
    assert heat["next"]["text"][0] == [
        f"{VOCAB[i]} ({f:.0%} of the bin)" for i, f in zip(ref_t.mode_ids, share, strict=True)
    ]


def test_layer_summary_refused_keeps_tracks_and_on_count(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    def over_the_cap(*args: object, **kwargs: object) -> None:
        raise BadRequest(
            "summary of 6000 steps x 24 cells = 144000 values is over the cap of 1000; ask for "
            "fewer steps or cells",
            status=422,
        )

    monkeypatch.setattr(HiddenScopeClient, "summary", over_the_cap)
    api.summary.clear()
    try:
        at = app("select", dataset="demo", pos="0", cw="0.2", range="20,23", tracks="pos,next")
    finally:
        api.summary.clear()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    warnings = "\n".join(str(w.value) for w in at.warning)
    assert "The cells of cell_l1 are not drawn over this range" in warnings
    assert "over the cap of 1000" in warnings
    assert "3 selected cells" in _text(at)
    (fig,) = _figures(at)
    assert not [t for t in fig["data"] if t["type"] in ("scatter", "scattergl")]
    heat = {t["name"]: t for t in fig["data"] if t["type"] == "heatmap"}
    assert list(heat) == ["on-count", "pos", "next"]
    # the planted phrase every 60 steps: some bins have all 3 selected cells on at one step
    assert _arr(heat["on-count"]["z"]).max() == 3
