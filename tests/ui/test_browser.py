"""A real browser (Debian chromium driven by Playwright, no browser download) against
``streamlit run`` and the real API stack.

The demo dataset (``deploy/demo/data``: the paper's §6.1 parenthesis language) is uploaded
through the datasets page's form; then the paper's Fig. 7 walk-through: select ``( 4`` on
``cell_l2`` with the nesting track and a second layer side by side, run the match, switch the
nesting heatmap on and map it onto the results, which lie at nesting level 4. Also: a box drag
over the plot sets the range, and a long range shows min/max bands. Screenshots go to a temporary
directory, or to ``$HIDDENSCOPE_SCREENSHOTS_DIR`` when it is set (``make screenshots`` sets it to
``docs/screenshots/`` to refresh the README's pictures)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import numpy as np
import pytest
import yaml
from hiddenscope_service.processes import free_port
from playwright.sync_api import Page, sync_playwright

from tests.ui.helpers import APP, UiStack, array

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "deploy" / "demo" / "data"
OPEN, FOUR = 0, 6  # token ids of "(" and "4" in the demo's vocab.txt

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ui_url(ui_stack: UiStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("streamlit") / "streamlit.log"
    env = {**os.environ, "HIDDENSCOPE_UI_API_URL": ui_stack.url, "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(APP),
             "--server.address", "127.0.0.1", "--server.port", str(port),
             "--server.headless", "true", "--browser.gatherUsageStats", "false"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/_stcore/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        # the demo uploaded here is not part of the other UI tests' catalog
        httpx.delete(f"{ui_stack.url}/v1/datasets/parens", timeout=30)


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the screenshots go: a temporary directory unless a refresh of the docs' pictures
    names one (``make screenshots``)."""
    chosen = os.environ.get("HIDDENSCOPE_SCREENSHOTS_DIR")
    if not chosen:
        return tmp_path_factory.mktemp("screenshots")
    out = Path(chosen)
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def page(ui_url: str) -> Iterator[Page]:
    assert Path(CHROMIUM).exists(), "chromium is missing: `make setup` installs it"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        pg = browser.new_page(viewport={"width": 1500, "height": 1100})
        try:
            yield pg
        finally:
            browser.close()


def _query(pg: Page) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(urlparse(pg.url).query).items()}


def _wait_query(pg: Page, key: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while key not in _query(pg):
        assert time.monotonic() < deadline, f"{key} never appeared in {pg.url}"
        pg.wait_for_timeout(200)
    return _query(pg)[key]


def _wait_for(pg: Page, key: str, value: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while _query(pg).get(key) != value:
        assert time.monotonic() < deadline, f"{key} != {value!r} in {pg.url}"
        pg.wait_for_timeout(200)


def _idle(pg: Page) -> None:
    """Wait until the app's script is not running (a click during a rerun can be lost)."""
    pg.wait_for_timeout(500)
    pg.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden", timeout=60_000)


def _no_traceback(pg: Page) -> None:
    assert pg.locator('[data-testid="stException"]').count() == 0


def _plot_data(pg: Page, index: int) -> dict[str, Any]:
    """The traces and layout plotly drew in the page's ``index``-th chart."""
    return dict(
        pg.evaluate(
            """(i) => { const gd = document.querySelectorAll('.js-plotly-plot')[i];
                return {data: gd.data.map(t => ({name: t.name, type: t.type,
                         z: t.z || null, xaxis: t.xaxis})),
                        layout: {shapes: gd.layout.shapes,
                                 annotations: (gd.layout.annotations || []).map(a => a.text)}};
            }""",
            index,
        )
    )


def _shot(pg: Page, shots: Path, name: str) -> None:
    pg.wait_for_timeout(1500)
    pg.screenshot(path=str(shots / name), full_page=True)
    assert (shots / name).stat().st_size > 0


def _open_four() -> int:
    """The first ``( 4`` where the ``(`` enters nesting level 4 (as tests/deploy do)."""
    tokens, levels = np.load(DEMO / "tokens.npy"), np.load(DEMO / "nesting.npy")
    return next(
        t
        for t in range(1, tokens.size - 1)
        if tokens[t] == OPEN and tokens[t + 1] == FOUR and levels[t] == 4
    )


def test_upload_the_demo_through_the_datasets_page(page: Page, ui_url: str, shots: Path) -> None:
    manifest = (DEMO / "manifest.yml").read_text()
    files = sorted({s["source"]["file"] for s in yaml.safe_load(manifest)["layers"]})
    files += ["tokens.npy", "vocab.txt", "nesting.npy"]
    page.goto(ui_url)
    page.get_by_text("Upload a dataset").click()
    text = page.get_by_label("…or the manifest text")
    text.fill(manifest)
    text.press("Control+Enter")  # commit the text area's value
    _idle(page)
    uploaders = page.locator('[data-testid="stFileUploader"] input[type="file"]')
    uploaders.nth(1).set_input_files([str(DEMO / f) for f in files])
    page.get_by_text("vocab.txt").first.wait_for(timeout=30_000)
    _idle(page)
    page.get_by_test_id("stBaseButton-primary").filter(has_text="Upload").click()
    # the job is followed on the page until it published the dataset
    page.get_by_text("published parens (20,000 steps)").wait_for(timeout=180_000)
    _no_traceback(page)
    page.locator('[data-testid="stDataFrame"]').wait_for(timeout=30_000)
    _shot(page, shots, "datasets.png")


def test_select_open_four_with_a_second_layer(page: Page, ui_url: str, shots: Path) -> None:
    a = _open_four()
    page.goto(
        f"{ui_url}/select?dataset=parens&layer=cell_l2&pos={a}&range={a},{a + 2}"
        "&tracks=nesting&compare=hidden_l2&cw=22"
    )
    page.get_by_text("selected cells —").first.wait_for(timeout=60_000)
    page.get_by_text("Compare: layer hidden_l2").wait_for(timeout=30_000)
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=30_000)
    assert page.locator(".js-plotly-plot").count() == 2
    assert page.locator(".js-plotly-plot canvas").count() > 0  # Scattergl draws with WebGL
    _no_traceback(page)
    main = _plot_data(page, 0)
    assert any(t["name"] == "cells" and t["type"] == "scattergl" for t in main["data"])
    _shot(page, shots, "select-view.png")


def test_box_drag_on_the_plot_sets_the_range(page: Page, ui_url: str) -> None:
    page.goto(f"{ui_url}/select?dataset=demo&pos=80")
    page.wait_for_selector(".js-plotly-plot .nsewdrag", timeout=60_000)
    page.wait_for_timeout(1000)
    box = page.locator(".js-plotly-plot .nsewdrag").first.bounding_box()
    assert box is not None
    # the window is [77, 117): steps 80..82 sit at 3.5/40 .. 5.5/40 of the plot's width
    y = box["y"] + box["height"] * 0.5
    x0 = box["x"] + box["width"] * (3.2 / 40)
    x1 = box["x"] + box["width"] * (5.8 / 40)
    page.mouse.move(x0, y)
    page.mouse.down()
    page.mouse.move((x0 + x1) / 2, y, steps=5)
    page.mouse.move(x1, y, steps=5)
    page.mouse.up()
    assert _wait_query(page, "range") == "80,83"
    page.get_by_text("3 selected cells").wait_for(timeout=30_000)
    assert _query(page)["cells"] == "3,7,11"


def test_tracks_switch_and_mask_in_the_browser(page: Page, ui_url: str, shots: Path) -> None:
    page.goto(f"{ui_url}/select?dataset=demo&pos=20&range=20,23&tracks=pos&hl=7")
    page.get_by_text("3 selected cells").wait_for(timeout=60_000)
    page.get_by_role("button", name="next (topk)").click()
    _wait_for(page, "tracks", "pos,next")
    page.get_by_role("button", name="loss (scalar)").click()
    _wait_for(page, "tracks", "pos,loss,next")
    page.get_by_role("button", name="pos (discrete)").click()
    _wait_for(page, "tracks", "loss,next")
    page.get_by_role("button", name="pos (discrete)").click()
    _wait_for(page, "tracks", "pos,loss,next")
    page.get_by_text("mask", exact=True).click()
    _wait_for(page, "mask", "1")
    page.wait_for_timeout(1000)
    names = [t["name"] for t in _plot_data(page, 0)["data"]]
    assert names.count("mask") == 3  # pos, loss, next (K rows in one overlay)
    _no_traceback(page)
    _shot(page, shots, "select-tracks.png")


def test_long_range_shows_bands_and_binned_tracks(page: Page, ui_url: str, shots: Path) -> None:
    a = _open_four()
    page.goto(
        f"{ui_url}/select?dataset=parens&layer=cell_l2&pos=0&cw=0.06&range={a},{a + 2}"
        "&tracks=nesting"
    )
    page.get_by_text("per-bin min..max").wait_for(timeout=60_000)
    page.get_by_text("selected cells —").first.wait_for(timeout=60_000)
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=30_000)
    _no_traceback(page)
    data = _plot_data(page, 0)["data"]
    # the selected cells' on-count per bin, then the track per bin
    assert [t["name"] for t in data if t["type"] == "heatmap"] == ["on-count", "nesting"]
    assert any(str(t["name"]).startswith("cell ") for t in data)  # the selected cells' bands
    _shot(page, shots, "select-summary.png")


def test_match_view_runs_and_maps_the_nesting_heatmap(page: Page, ui_url: str, shots: Path) -> None:
    a = _open_four()
    page.goto(f"{ui_url}/select?dataset=parens&layer=cell_l2&pos={a}&range={a},{a + 2}")
    link = page.get_by_text("Match these")
    link.wait_for(timeout=60_000)
    cells = _wait_query(page, "cells")
    link.click()
    page.get_by_text("candidate statistics").click()
    _wait_for(page, "stats", "1")
    _idle(page)
    page.get_by_role("button", name="Run match").click()
    page.get_by_text("50 results").wait_for(timeout=120_000)
    assert _query(page)["cells"] == cells
    page.get_by_role("button", name="nesting (discrete)").click()
    _wait_for(page, "tracks", "nesting")
    _idle(page)
    option = page.locator('[data-testid="stRadio"]').get_by_text("nesting", exact=True)
    option.click()
    _wait_for(page, "map", "nesting")
    page.get_by_text("candidates (runs of at least one selected cell)").wait_for(timeout=30_000)
    page.wait_for_timeout(1500)
    _no_traceback(page)
    matrix = _plot_data(page, 0)
    assert matrix["layout"]["annotations"][-1] == "nesting"
    nesting = next(t for t in matrix["data"] if t["xaxis"] == "x3")
    background = next(t for t in matrix["data"] if t["name"] == "background")
    levels = array(nesting["z"])
    # the nesting colours are on the matrix
    assert np.array_equal(array(background["z"]), levels, equal_nan=True)
    # the paper's finding: the matched runs lie at nesting level 4 (label index 4)
    runs = [s for s in matrix["layout"]["shapes"] if s.get("type") == "rect"]
    assert len(runs) == 50
    offsets_start = 3  # LEFT context columns before offset 0
    at_four = []
    for row, shape in zip(levels, runs, strict=True):
        length = round(shape["x1"] + 0.5)
        run = row[offsets_start : offsets_start + length]
        at_four.append(np.mean(run[np.isfinite(run)] == 4) >= 0.9)
    assert np.mean(at_four) >= 0.8, at_four
    _shot(page, shots, "match-view.png")
