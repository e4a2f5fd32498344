"""A real browser (Debian chromium driven by Playwright) against ``streamlit run`` and the real
API stack: the select view draws its plot, a box drag over the plot sets the range, and the
match view runs; screenshots go to ``docs/screenshots/``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from hiddenscope_service.testing import free_port
from playwright.sync_api import Page, sync_playwright

from tests.ui.conftest import APP
from tests.ui.stack import UiStack

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"

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


def test_select_view_draws_the_plot(page: Page, ui_url: str) -> None:
    page.goto(f"{ui_url}/select?dataset=demo&pos=20&range=20,23&tracks=pos,next,loss&hl=7")
    chart = page.locator('[data-testid="stPlotlyChart"]')
    chart.wait_for(timeout=60_000)
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=30_000)
    assert page.locator(".js-plotly-plot canvas").count() > 0  # Scattergl draws with WebGL
    page.get_by_text("3 selected cells").wait_for(timeout=30_000)
    assert page.locator('[data-testid="stException"]').count() == 0
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(1500)
    page.screenshot(path=str(SHOTS / "select-view.png"), full_page=True)


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


def test_match_view_runs(page: Page, ui_url: str) -> None:
    page.goto(f"{ui_url}/match?dataset=demo&cells=3,7,11&tracks=pos,loss&map=pos")
    page.get_by_role("button", name="Run match").click()
    page.wait_for_selector('[data-testid="stDataFrame"]', timeout=60_000)
    page.wait_for_selector('[data-testid="stPlotlyChart"]', timeout=30_000)
    page.get_by_text("50 results").wait_for(timeout=30_000)
    page.wait_for_timeout(1500)
    page.screenshot(path=str(SHOTS / "match-view.png"), full_page=True)
