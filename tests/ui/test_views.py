"""AppTest against the real stack: what the select and match views add to the smoke tests —
meta tracks switched on and off, the mask, a second layer side by side, axes scaled per layer,
phrase search, annotation heatmaps and their mapping onto the word matrix, candidate statistics,
and a running job's progress and cancel."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
from hiddenscope_match.matches import JOB_KIND, JOB_PREFIX
from hiddenscope_service.jobs import JobStore
from streamlit.testing.v1 import AppTest

from tests.ui.conftest import page_text as _text
from tests.ui.figures import array as _arr
from tests.ui.stack import PLANTED_CELLS, VOCAB, UiStack

App = Callable[..., AppTest]


def _figures(at: AppTest) -> list[dict[str, Any]]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def _heat_rows(fig: dict[str, Any]) -> list[str]:
    """The y labels of the figure's heatmap rows (words, track rows), overlays left out."""
    rows: list[str] = []
    for t in fig["data"]:
        if t.get("type") == "heatmap" and t.get("name") != "mask":
            rows += [str(y) for y in t.get("y", [])]
    return rows


def _pills(at: AppTest, label: str) -> Any:
    return next(b for b in at.button_group if str(b.label).startswith(label))


def _info(ui_stack: UiStack) -> dict[str, Any]:
    info = httpx.get(f"{ui_stack.url}/v1/datasets/demo/info", timeout=30).json()
    return {x["info"]["name"]: x["info"] for x in info["layers"]}


def _run_match(at: AppTest) -> AppTest:
    next(b for b in at.button if b.label == "Run match").click().run()
    deadline = time.monotonic() + 90
    while not len(at.dataframe) and time.monotonic() < deadline:
        assert not at.exception, at.exception
        assert not at.error, [e.value for e in at.error]
        time.sleep(0.5)
        at.run()
    assert len(at.dataframe), _text(at)
    return at


# ------------------------------------------------------------------------------ select view


def test_meta_tracks_switch_on_and_off(app: App) -> None:
    at = app("select", dataset="demo", pos="20", range="20,23", tracks="pos")
    assert not at.exception
    pills = _pills(at, "Meta tracks")
    assert pills.value == ["pos"]
    assert "pos" in _heat_rows(_figures(at)[0])
    # any number on: all three (shown in the dataset's order, top-K as K rows)
    pills.set_value(["next", "pos", "loss"]).run()
    assert at.query_params["tracks"] == "pos,loss,next"
    rows = _heat_rows(_figures(at)[0])
    assert rows == ["words", "pos", "loss", "next #1", "next #2", "next #3"]
    # and off again, one by one; the selection stays
    _pills(at, "Meta tracks").unselect("pos").run()
    assert at.query_params["tracks"] == "loss,next"
    assert "pos" not in _heat_rows(_figures(at)[0])
    _pills(at, "Meta tracks").set_value([]).run()
    assert "tracks" not in at.query_params
    assert _heat_rows(_figures(at)[0]) == ["words"]
    assert at.query_params["range"] == "20,23"
    assert not at.exception


def test_mask_fades_tracks_by_the_on_count(app: App) -> None:
    at = app("select", dataset="demo", pos="20", range="20,23", tracks="pos,next")
    fig = _figures(at)[0]
    assert not [t for t in fig["data"] if t.get("name") == "mask"]
    at.toggle(key="mask").set_value(True).run()
    assert at.query_params["mask"] == "1"
    fig = _figures(at)[0]
    masks = [t for t in fig["data"] if t.get("name") == "mask"]
    assert [len(m["y"]) for m in masks] == [1, 3]  # pos, and the 3 rows of next
    words = next(t for t in fig["data"] if t.get("y") == ["words"])
    counts = _arr(words["z"])[0]
    alpha = 0.2 + 0.8 * counts / len(PLANTED_CELLS)
    for m in masks:
        assert np.allclose(_arr(m["z"]), 1 - alpha)
    x = [int(v) for v in _arr(words["x"])]
    # fully opaque on the planted phrase (all 3 cells on), faded most where none is
    assert counts[x.index(21)] == len(PLANTED_CELLS)
    assert float(_arr(masks[0]["z"])[0, x.index(21)]) == pytest.approx(0.0)
    assert float(np.max(_arr(masks[0]["z"]))) == pytest.approx(0.8)


def test_second_layer_side_by_side(app: App, ui_stack: UiStack) -> None:
    at = app("select", dataset="demo", layer="cell_l1", pos="20", range="20,23")
    assert len(_figures(at)) == 1
    at.selectbox(key="compare").set_value("hidden_l1").run()
    assert not at.exception
    assert at.query_params["compare"] == "hidden_l1"
    first, second = _figures(at)
    # the compare plot: hidden_l1's 12 cells, its own S1 over the same range, own y scale
    sel = httpx.post(
        f"{ui_stack.url}/v1/datasets/demo/select",
        json={"layer": "hidden_l1", "start": 20, "end": 23, "threshold": 0.3},
        timeout=30,
    ).json()["cells"]
    assert f"{len(sel)} cells of hidden_l1 on over [20, 23)" in _text(at)
    layers = _info(ui_stack)
    for fig, name in ((first, "cell_l1"), (second, "hidden_l1")):
        lo, hi = layers[name]["value_min"], layers[name]["value_max"]
        m = max(abs(lo), abs(hi)) * 1.05
        assert fig["layout"]["yaxis"]["range"] == pytest.approx([-m, m]), name
    assert second["layout"]["yaxis"]["range"][1] < first["layout"]["yaxis"]["range"][1]
    selected = {t["name"] for t in second["data"] if str(t.get("name", "")).startswith("cell ")}
    assert selected == {f"cell {c}" for c in sel}
    # the main selection is unchanged
    assert "3 selected cells" in _text(at)
    # switching the main layer to the compared one drops the comparison
    at.selectbox(key="pick-layer").set_value("hidden_l1").run()
    assert "compare" not in at.query_params
    assert len(_figures(at)) == 1


def test_long_range_axis_is_the_layers_range(app: App, ui_stack: UiStack) -> None:
    layers = _info(ui_stack)
    for name in ("cell_l1", "hidden_l1"):
        at = app("select", dataset="demo", layer=name, pos="0", cw="0.2")
        assert not at.exception
        (fig,) = _figures(at)
        lo, hi = layers[name]["value_min"], layers[name]["value_max"]
        m = max(abs(lo), abs(hi)) * 1.05
        assert fig["layout"]["yaxis"]["range"] == pytest.approx([-m, m]), name
        # bins, not steps: every trace is drawn at (at most 300) bin centres, every cell once
        xs = [_arr(t["x"]) for t in fig["data"] if "x" in t]
        assert len(np.unique(np.concatenate(xs)[np.isfinite(np.concatenate(xs))])) <= 300
        lines = [t for t in fig["data"] if t["type"] == "scattergl"]
        assert [t["name"] for t in lines] == [
            "per-bin max of each cell",
            "per-bin min of each cell",
        ]
        n_cells = layers[name]["n_cells"]
        assert int(np.isnan(_arr(lines[0]["y"])).sum()) == n_cells  # one polyline per cell


def test_long_range_shows_tracks_per_bin(app: App, ui_stack: UiStack) -> None:
    at = app("select", dataset="demo", pos="0", cw="0.2", tracks="pos,loss,next")
    assert not at.exception
    assert not at.error, [e.value for e in at.error]
    (fig,) = _figures(at)
    heat = {t["name"]: t for t in fig["data"] if t["type"] == "heatmap"}
    assert set(heat) == {"pos", "loss", "next"}  # every kind, top-K as its top-1 per bin
    assert "on-count" not in heat  # no cells selected
    assert heat["pos"]["y"] == ["pos=NOUN", "pos=VERB", "pos=DET", "pos=ADJ"]
    assert heat["next"]["y"] == ["next top-1"]
    share = _arr(heat["pos"]["z"])
    assert np.allclose(share.sum(axis=0), 1.0)  # every step has one label
    # against the API's own numbers: the first bin's loss mean and pos shares
    centres = _arr(heat["loss"]["x"])
    width = round(centres[1] - centres[0])
    track = httpx.get(
        f"{ui_stack.url}/v1/datasets/demo/tracks/loss", params={"start": 0, "end": width}
    ).json()
    assert _arr(heat["loss"]["z"])[0, 0] == pytest.approx(np.mean(track["value"]), rel=1e-5)
    pos = httpx.get(
        f"{ui_stack.url}/v1/datasets/demo/tracks/pos", params={"start": 0, "end": width}
    ).json()
    assert share[:, 0] == pytest.approx(np.bincount(pos["label"], minlength=4) / width)
    # top-K: the first bin's most frequent top-1 word, and the share of steps it is top-1
    nxt = httpx.get(
        f"{ui_stack.url}/v1/datasets/demo/tracks/next", params={"start": 0, "end": width}
    ).json()
    top1 = np.asarray(nxt["ids"])[:, 0]
    counts = np.bincount(top1)
    mode = int(np.argmax(counts))  # ties: the smallest id
    assert heat["next"]["text"][0][0] == f"{VOCAB[mode]} ({counts[mode] / width:.0%} of the bin)"
    assert _arr(heat["next"]["z"])[0, 0] == pytest.approx(counts[mode] / width)


def test_phrase_search_jumps_to_a_hit(app: App, ui_stack: UiStack) -> None:
    at = app("select", dataset="demo", pos="1000")
    at.text_input(key="search-q").input("a little prince")
    at.button(key="FormSubmitter:search-Search").click().run()
    assert not at.exception
    planted = list(ui_stack.demo["planted"])  # type: ignore[call-overload]
    assert "hits for “a little prince”" in _text(at)
    hit = next(b for b in at.button if str(b.label).startswith(f"{planted[1]:,}:"))
    hit.click().run()
    assert at.query_params["pos"] == str(planted[1])
    assert at.query_params["range"] == f"{planted[1]},{planted[1] + 3}"
    assert "3 selected cells" in _text(at)


# ------------------------------------------------------------------------------- match view


def test_heatmaps_on_off_mapping_and_mask(app: App) -> None:
    at = _run_match(app("match", dataset="demo", layer="cell_l1", cells="3,7,11"))
    matrix = _figures(at)[0]
    titles = [a["text"] for a in matrix["layout"]["annotations"]]
    assert titles == ["results (aligned at match start)", "match count"]
    # switch two annotation heatmaps on: they stand beside the match count
    _pills(at, "Annotation heatmaps").set_value(["pos", "next"]).run()
    assert at.query_params["tracks"] == "pos,next"
    matrix = _figures(at)[0]
    titles = [a["text"] for a in matrix["layout"]["annotations"]]
    assert titles == ["results (aligned at match start)", "match count", "pos", "next"]
    # map pos onto the matrix: the background takes pos' values and colours
    at.radio(key="map").set_value("pos").run()
    assert at.query_params["map"] == "pos"
    matrix = _figures(at)[0]
    background = next(t for t in matrix["data"] if t.get("name") == "background")
    pos_panel = next(t for t in matrix["data"] if t.get("xaxis") == "x3")
    assert np.array_equal(_arr(background["z"]), _arr(pos_panel["z"]), equal_nan=True)
    assert background["colorscale"] == pos_panel["colorscale"]
    # the mask fades it by the match count (0.1 .. 1)
    at.toggle(key="match-mask").set_value(True).run()
    matrix = _figures(at)[0]
    (mask,) = [t for t in matrix["data"] if t.get("name") == "mask"]
    count_panel = next(t for t in matrix["data"] if t.get("xaxis") == "x2")
    counts = _arr(count_panel["z"])
    expect = 1 - (0.1 + 0.9 * np.nan_to_num(counts) / len(PLANTED_CELLS))
    assert np.allclose(_arr(mask["z"]), expect)
    # off again
    _pills(at, "Annotation heatmaps").unselect("pos").run()
    matrix = _figures(at)[0]
    titles = [a["text"] for a in matrix["layout"]["annotations"]]
    assert titles == ["results (aligned at match start)", "match count", "next"]
    assert not at.exception


def test_candidate_statistics(app: App, ui_stack: UiStack) -> None:
    at = app("match", dataset="demo", layer="cell_l1", cells="3,7,11")
    at.checkbox(key="stats").check().run()
    assert at.query_params["stats"] == "1"
    at = _run_match(at)
    direct = httpx.post(
        f"{ui_stack.url}/v1/datasets/demo/matches",
        params={"wait": 60},
        json={"layer": "cell_l1", "cells": list(PLANTED_CELLS), "stats": True},
        timeout=90,
    ).json()["result"]["stats"]
    strict = int(sum(direct["strict_length_histogram"]))
    assert f"**{direct['n_candidates']:,} candidates**" in _text(at)
    assert f"**{strict:,}** of them with every selected cell on" in _text(at)
    lengths = _figures(at)[1]
    bars = {t["name"]: t for t in lengths["data"] if t["type"] == "bar"}
    assert set(bars) == {"all candidates", "candidates with S1 ⊆ S2", "top results"}
    n = len(bars["all candidates"]["y"])
    assert list(_arr(bars["all candidates"]["y"])) == direct["length_histogram"][:n]
    assert _arr(bars["top results"]["y"]).sum() == 50


def test_without_statistics_the_top_lengths_show(app: App) -> None:
    at = _run_match(app("match", dataset="demo", layer="cell_l1", cells="3,7,11"))
    lengths = _figures(at)[1]
    assert [t["name"] for t in lengths["data"]] == ["top results"]
    assert "candidate statistics" in _text(at)


def test_running_job_shows_progress_and_cancels(app: App, ui_stack: UiStack) -> None:
    """A job in the store that a worker holds at shard 1 of 4 (no worker will ever run it)."""
    assert ui_stack.redis is not None
    store = JobStore.from_url(ui_stack.redis.url, prefix=JOB_PREFIX)
    job, _ = store.create(
        JOB_KIND, {"dataset_id": str(ui_stack.demo["id"]), "n_shards": 4}, progress_total=4
    )
    assert store.claim(job.id, "ui-test", 300).outcome == "claimed"
    assert store.report_progress(job.id, "ui-test", 300, done=1, total=4) == "ok"
    at = app("match", dataset="demo", layer="cell_l1", cells="3,7,11", job=job.id)
    assert not at.exception
    (bar,) = at.get("progress")
    assert "match running: 1/4 shards" in str(bar.proto.text)
    assert bar.proto.value == 25
    at.button(key="cancel-match").click().run()
    assert not at.exception
    assert store.get(job.id).cancel_requested
    assert store.finish(job.id, "ui-test", "cancelled")
    at.run()
    assert "The match was cancelled" in _text(at)


def test_going_between_pages_keeps_the_view(app: App) -> None:
    """Streamlit forgets a page's widgets when another page is drawn: the layer picker of the
    match view must show the select view's layer (not its first), so S1 survives the trip."""
    at = app("select", dataset="demo", layer="hidden_l1", pos="20", range="20,23")
    assert at.query_params["cells"] == "3,7,11"
    at.switch_page("views/match.py").run()
    assert not at.exception
    assert at.selectbox(key="pick-layer").value == "hidden_l1"
    assert at.selectbox(key="pick-dataset").value == "demo"
    assert "**3 cells**: 3, 7, 11" in _text(at)
    at.switch_page("views/select.py").run()
    assert (at.query_params["layer"], at.query_params["range"]) == ("hidden_l1", "20,23")
    assert "3 selected cells" in _text(at)
