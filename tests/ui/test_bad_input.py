"""Bad input never shows a traceback: an API that does not answer in time, a dataset deleted
while it is open, a failed ingest job, and links whose layer, compared layer, tracks or cells
are stale. Each page says what happened and offers the way on."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
from hiddenscope_service.jobs import JobStore
from hiddenscope_ui import api
from streamlit.testing.v1 import AppTest

from tests.ui.helpers import UiStack, write_demo
from tests.ui.helpers import page_text as _text

App = Callable[..., AppTest]


def test_slow_api_says_it_did_not_answer(slow_api_app: App) -> None:
    for page in ("datasets", "select", "match"):
        at = slow_api_app(page, dataset="demo", cells="1")
        assert not at.exception, page
        assert "did not answer in time" in _text(at), (page, _text(at))
        assert any(b.label == "Retry" for b in at.button), page


def _gone(at: AppTest) -> None:
    assert not at.exception
    assert "Dataset **doomed** does not exist (any more)" in _text(at), _text(at)
    # the way on: another dataset
    at.button(key="gone-choose").click().run()
    assert not at.exception
    assert "dataset" not in at.query_params


@pytest.fixture
def doomed(ui_stack: UiStack) -> Iterator[str]:
    write_demo(ui_stack.data_root, name="doomed")
    api.list_datasets.clear()
    yield "doomed"
    httpx.delete(f"{ui_stack.url}/v1/datasets/doomed", timeout=30)
    api.list_datasets.clear()


def test_dataset_deleted_while_the_select_view_is_open(
    app: App, ui_stack: UiStack, doomed: str
) -> None:
    at = app("select", dataset=doomed, pos="20", range="20,23")
    assert not at.exception
    assert "3 selected cells" in _text(at)
    r = httpx.delete(f"{ui_stack.url}/v1/datasets/{doomed}", timeout=30)
    assert r.status_code in (200, 202, 204), r.text
    # the next move reads a window that is not there any more
    at.button(key="shift4").click().run()
    _gone(at)


def test_dataset_deleted_while_the_match_view_is_open(
    app: App, ui_stack: UiStack, doomed: str
) -> None:
    at = app("match", dataset=doomed, layer="cell_l1", cells="3,7,11")
    assert not at.exception
    assert any(b.label == "Run match" for b in at.button)
    httpx.delete(f"{ui_stack.url}/v1/datasets/{doomed}", timeout=30).raise_for_status()
    next(b for b in at.button if b.label == "Run match").click().run()
    _gone(at)


def test_failed_ingest_job_shows_its_problem(app: App, ui_stack: UiStack) -> None:
    assert ui_stack.redis is not None
    store = JobStore.from_url(ui_stack.redis.url, prefix="hiddenscope:ingest")
    job, _ = store.create("ingest", {"owned": False}, progress_total=1)
    store.fail(
        job.id,
        {"title": "Bad upload", "status": 422, "detail": "tokens has 100 steps, states 120"},
    )
    at = app("datasets")
    at.text_input(key="follow-id").input(job.id)
    at.button(key="FormSubmitter:follow-Follow").click().run()
    assert not at.exception
    assert any("tokens has 100 steps, states 120" in str(e.value) for e in at.error), _text(at)
    assert f"`{job.id}` — **failed**" in _text(at)


@pytest.mark.parametrize(
    ("query", "says", "then"),
    [
        ({"layer": "states9"}, "Layer **states9** is not in this dataset", {"layer": "cell_l1"}),
        ({"compare": "nope"}, "Layer **nope** cannot be compared", {"compare": None}),
        ({"compare": "cell_l1"}, "Layer **cell_l1** cannot be compared", {"compare": None}),
        ({"tracks": "pos,gone"}, "gone not in this dataset", {"tracks": "pos"}),
        ({"cells": "3,99,7", "hl": "99"}, "Cell(s) 99 are not in layer", {"cells": "3,7"}),
        ({"pos": "999999"}, "past the end", {"pos": None}),
    ],
)
def test_stale_link_parameters(
    app: App, query: dict[str, str], says: str, then: dict[str, str | None]
) -> None:
    at = app("select", dataset="demo", **query)
    assert not at.exception
    assert not at.error, [e.value for e in at.error]
    assert says in _text(at), _text(at)
    for key, value in then.items():
        assert at.query_params.get(key) == value, (key, dict(at.query_params))
    assert len(at.get("plotly_chart")) == 1
