"""The figures alone (no Streamlit, no HTTP): binned tracks, the mask, run-length bars."""

from __future__ import annotations

import numpy as np
import pytest
from hiddenscope_ui import charts


def test_a_rare_label_stays_visible_when_binned() -> None:
    """A binding site (label 1) on 1 step of a 20-step bin is 5 % of it, not outvoted."""
    labels = [0] * 100
    labels[7] = 1
    labels[95] = -1  # no label
    row = charts.binned_track_rows(
        "site", "discrete", [0, 20, 40, 60, 80, 100], labels, ["no", "yes"]
    )
    assert row is not None
    assert row.row_labels == ["site=no", "site=yes"]
    assert row.z[1].tolist() == [0.05, 0, 0, 0, 0]
    assert row.z[0].tolist() == [0.95, 1, 1, 1, 0.95]


def test_scalar_tracks_bin_to_means_and_topk_has_no_binned_form() -> None:
    row = charts.binned_track_rows("loss", "scalar", [10, 13, 15], values=[1, 2, None, 4, 6])
    assert row is not None
    assert row.z.tolist() == [[1.5, 5.0]]
    assert charts.binned_track_rows("next", "topk", [0, 5]) is None


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
