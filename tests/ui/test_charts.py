"""The figures alone (no Streamlit, no HTTP): track summaries, the mask, run-length bars."""

from __future__ import annotations

import numpy as np
import pytest
from hiddenscope_client import TrackSummary, TrackWindow
from hiddenscope_ui import charts


def test_server_track_summaries_as_rows() -> None:
    """Every kind of the API's track summary (``GET …/tracks/{t}/summary``) becomes rows at bin
    resolution: label shares, bin means with min/max, and each bin's most frequent top-1."""
    edges = [0, 20, 40, 50]
    bins = {"start": 0, "end": 50, "bins": 3, "bin_starts": edges}
    row = charts.summary_track_rows(
        TrackSummary(
            name="site",
            kind="discrete",
            **bins,
            labels=["no", "yes", "maybe"],
            label_counts=[[19, 1, 0], [20, 0, 0], [0, 0, 0]],
            unlabelled=[0, 0, 10],
        )
    )
    assert row is not None
    assert row.row_labels == ["site=no", "site=yes"]  # labels present only
    assert row.z.tolist() == [[0.95, 1.0, 0.0], [0.05, 0.0, 0.0]]
    row = charts.summary_track_rows(
        TrackSummary(
            name="loss",
            kind="scalar",
            **bins,
            mins=[0.5, None, 1.0],
            maxs=[2.5, None, 1.0],
            means=[1.5, None, 1.0],
            counts=[20, 0, 10],
        )
    )
    assert row is not None
    assert np.array_equal(row.z, [[1.5, np.nan, 1.0]], equal_nan=True)
    assert row.text == [["mean 1.5 (min 0.5, max 2.5)", "", "mean 1 (min 1, max 1)"]]
    row = charts.summary_track_rows(
        TrackSummary(
            name="next",
            kind="topk",
            **bins,
            mode_ids=[4, 7, 4],
            mode_counts=[10, 20, 1],
            mode_texts=["mat", "ran", "mat"],
        )
    )
    assert row is not None
    assert row.row_labels == ["next top-1"]
    assert row.z.tolist() == [[0.5, 1.0, 0.1]]
    assert row.text == [["mat (50% of the bin)", "ran (100% of the bin)", "mat (10% of the bin)"]]
    no_vocab = TrackSummary("next", "topk", 0, 5, 1, [0, 5], mode_ids=[3], mode_counts=[5])
    ids_only = charts.summary_track_rows(no_vocab)  # a dataset without a vocabulary
    assert ids_only is not None
    assert ids_only.text == [["#3 (100% of the bin)"]]


def test_summary_figure_draws_the_on_count_row_under_the_lines() -> None:
    edges = [0, 10, 20]
    fig = charts.summary_figure(
        bin_starts=edges,
        cells=[0, 1],
        mins=np.zeros((2, 2), np.float32),
        maxs=np.ones((2, 2), np.float32),
        selected=[0, 1],
        highlight=None,
        threshold=0.3,
        brush=None,
        yrange=[-1, 1],
        tracks=[charts.track_rows(TrackWindow("loss", "scalar", 0, 2, value=[1.0, 2.0]), 2)],
        on_count=charts.OnCountBins(mins=[0, 1], maxs=[2, 1], means=[0.5, 1.0], n_cells=2),
    )
    heat = [t for t in fig.data if t.type == "heatmap"]
    assert [t.name for t in heat] == ["on-count", "loss"]
    count = heat[0]
    assert list(count.y) == ["on-count (max)"]
    assert np.asarray(count.z).tolist() == [[2.0, 1.0]]
    assert count.zmax == 2
    assert list(count.text[0]) == ["max 2 · mean 0.50 · min 0", "max 1 · mean 1.00 · min 1"]
    assert (count.yaxis, heat[1].yaxis) == ("y2", "y3")  # its own row, above the tracks
    # without cells (a layer summary refused) the rows still show
    bare = charts.summary_figure(
        bin_starts=edges,
        cells=[],
        mins=np.empty((2, 0), np.float32),
        maxs=np.empty((2, 0), np.float32),
        selected=[0, 1],
        highlight=None,
        threshold=0.3,
        brush=None,
        yrange=[-1, 1],
        on_count=charts.OnCountBins(mins=[0, 1], maxs=[2, 1], means=[0.5, 1.0], n_cells=2),
    )
    assert [t.type for t in bare.data] == ["heatmap"]


def test_mask_alpha() -> None:
    a = charts.mask_alpha([0, 1, 3, np.nan, 7], 3, 0.2)
    assert a == pytest.approx([0.2, 0.2 + 0.8 / 3, 1.0, 0.2, 1.0])


def test_length_bars_stop_at_the_longest_run() -> None:
    fig = charts.length_figure([3, 3, 5], [0, 0, 10, 4, 0, 1, 0, 0], [0, 0, 2, 2, 0, 1, 0, 0])
    bars = {t.name: list(t.y) for t in fig.data}
    assert bars["top results"] == [0, 0, 0, 2, 0, 1]
    assert bars["all candidates"] == [0, 0, 10, 4, 0, 1]
    assert fig.layout.yaxis.type == "log"
    only_top = charts.length_figure([2])
    assert [t.name for t in only_top.data] == ["top results"]
    assert only_top.layout.yaxis.type == "linear"


def test_page_scripts_have_no_stray_strings() -> None:
    """A page script is run by Streamlit with "magic": a bare string at module level (say, a
    docstring under a constant) would be printed on the page."""
    import ast
    from pathlib import Path

    views = Path(charts.__file__).parent / "views"
    for script in sorted(views.glob("*.py")):
        body = ast.parse(script.read_text()).body
        stray = [
            node.lineno
            for node in body[1:]
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        ]
        assert stray == [], f"{script.name}: bare strings at lines {stray}"
