"""AppTest smoke tests of every page against the real API stack (gateway + ingest + match),
and the error paths: API down, dataset gone, failed input, malformed links."""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import parse_qs

from hiddenscope_ui.state import parse_query_params
from streamlit.testing.v1 import AppTest

from tests.ui.helpers import PLANTED_CELLS, UiStack
from tests.ui.helpers import page_text as _text

App = Callable[..., AppTest]


def _charts(at: AppTest) -> int:
    return len(at.get("plotly_chart"))


def test_datasets_page_lists_the_catalog(app: App) -> None:
    at = app("datasets")
    assert not at.exception
    assert not at.error, [e.value for e in at.error]
    rows = at.dataframe[0].value
    assert list(rows["name"]) == ["demo"]
    assert "cell_l1 (24, tanh)" in rows["layers"][0]
    assert "pos (discrete)" in rows["tracks"][0]


def test_select_view_selects_the_planted_cells(app: App, ui_stack: UiStack) -> None:
    at = app("select", dataset="demo", pos="20", range="20,23", tracks="pos,next,loss")
    assert not at.exception
    assert not at.error, [e.value for e in at.error]
    assert _charts(at) == 1
    assert f"{len(PLANTED_CELLS)} selected cells" in _text(at)
    # S1 goes into the URL (the original's `sc`)
    assert at.query_params["cells"] == ",".join(map(str, PLANTED_CELLS))
    assert at.query_params["range"] == "20,23"


def test_select_view_opens_an_original_lstmvis_link(app: App) -> None:
    at = app(
        "select", project="demo", source="states::cell_l1", pos="20", activation="0.3",
        wordBrush="..3,6", wordBrushZero="..1,0", meta="..pos",
    )  # fmt: skip
    assert not at.exception
    assert at.query_params["range"] == "20,23"  # pos 20 - 3 + [3, 6)
    assert at.query_params["dataset"] == "demo"
    assert "3 selected cells" in _text(at)


def test_select_view_shift_zoom_back_forward_and_jump(app: App) -> None:
    at = app("select", dataset="demo", pos="100")
    at.button(key="shift4").click().run()  # ›: +5
    assert at.query_params["pos"] == "105"
    at.button(key="shift3").click().run()
    at.button(key="shift3").click().run()
    assert at.query_params["pos"] == "95"
    back = next(b for b in at.button if b.label == "⟵")
    back.click().run()
    assert at.query_params["pos"] == "100"
    fwd = next(b for b in at.button if b.label == "⟶")
    fwd.click().run()
    assert at.query_params["pos"] == "95"
    zoom_out = next(b for b in at.button if b.label == "A−")
    zoom_out.click().run()
    assert at.query_params["cw"] == "25"
    at.text_input[0].input("doc-c:7")
    at.button(key="FormSubmitter:jump-Go").click().run()
    assert at.query_params["pos"] == str(3000 + 7)
    at.text_input[0].input("doc-x:7")
    at.button(key="FormSubmitter:jump-Go").click().run()
    assert "no sequence named 'doc-x'" in _text(at)
    assert not at.exception


def test_select_view_long_range_shows_summaries(app: App) -> None:
    at = app("select", dataset="demo", pos="0", cw="0.2")  # 6000 steps
    assert not at.exception
    assert not at.error, [e.value for e in at.error]
    assert _charts(at) == 1
    assert "per-bin min..max" in _text(at)


def test_match_view_runs_a_match_and_links_back(app: App) -> None:
    at = app("match", dataset="demo", layer="cell_l1", cells="3,7,11", tracks="pos,loss")
    assert not at.exception
    at.button[0].click().run()  # Run match
    deadline = time.monotonic() + 60
    while not len(at.dataframe) and time.monotonic() < deadline:
        time.sleep(0.5)
        at.run()
    assert not at.exception
    assert not at.error, [e.value for e in at.error]
    table = at.dataframe[0].value
    assert len(table) == 50
    assert (table["shared"] == 3).all()
    assert (table["length"] == 3).all()
    first = int(table["start"][0])
    link = str(table["open"][0])
    assert link.startswith("select?")
    opened = parse_query_params(parse_qs(link.split("?", 1)[1])).state
    assert (opened.dataset, opened.layer, opened.pos) == ("demo", "cell_l1", first)
    assert opened.cells == PLANTED_CELLS
    assert opened.range is None
    assert _charts(at) == 2  # the word matrix with its heatmaps, and the run lengths
    assert at.query_params["job"]


def test_api_down_shows_a_message_not_a_traceback(dead_api_app: App) -> None:
    for page in ("datasets", "select", "match"):
        at = dead_api_app(page, dataset="demo")
        assert not at.exception, page
        assert "not reachable" in _text(at) or "unavailable" in _text(at), (page, _text(at))


def test_unknown_dataset_says_so(app: App) -> None:
    at = app("select", dataset="gone-away", pos="3")
    assert not at.exception
    assert "does not exist (any more)" in _text(at)


def test_malformed_link_is_reported_and_the_page_still_works(app: App) -> None:
    at = app("select", dataset="demo", pos="12x", range="9,3", threshold="abc", cells="1,,q")
    assert not at.exception
    text = _text(at)
    assert "ignored URL parameter pos" in text
    assert "ignored URL parameter range" in text
    assert _charts(at) == 1


def test_range_across_sequences_is_a_message(app: App) -> None:
    at = app("select", dataset="demo", pos="1497", range="1498,1502")
    assert not at.exception
    assert "Selection not possible" in _text(at)


def test_stale_match_job_in_the_link(app: App) -> None:
    at = app("match", dataset="demo", cells="3,7,11", job="no-such-job-0000")
    assert not at.exception
    assert "unknown" in _text(at)
