"""UI test fixtures: the real API stack (see :mod:`tests.ui.helpers`) and AppTest factories."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest
from streamlit.testing.v1 import AppTest

from tests.ui.helpers import APP, UiStack, start_stack


@pytest.fixture(scope="session")
def ui_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiStack]:
    stack = start_stack(tmp_path_factory.mktemp("ui-stack"))
    try:
        yield stack
    finally:
        stack.stop()


def _use_api(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    from hiddenscope_ui.settings import get_settings

    monkeypatch.setenv("HIDDENSCOPE_UI_API_URL", url)
    monkeypatch.setenv("HIDDENSCOPE_UI_CONNECT_TIMEOUT", "2")
    get_settings.cache_clear()


@pytest.fixture
def app(ui_stack: UiStack, monkeypatch: pytest.MonkeyPatch) -> Callable[..., AppTest]:
    """``app(page="select", **query)`` → an AppTest of the whole app (st.navigation), on
    ``page``, with the URL's query ``query``, talking to the real stack; already run once."""
    _use_api(monkeypatch, ui_stack.url)
    return _factory()


@pytest.fixture
def dead_api_app(monkeypatch: pytest.MonkeyPatch) -> Callable[..., AppTest]:
    """The same against a port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _use_api(monkeypatch, f"http://127.0.0.1:{port}")
    return _factory()


@pytest.fixture
def slow_api_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., AppTest]]:
    """An API that accepts connections and never answers (a listening socket nobody accepts
    from: the kernel completes the handshake, no one reads the request); reads time out after
    0.5 s."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        monkeypatch.setenv("HIDDENSCOPE_UI_READ_TIMEOUT", "0.5")
        _use_api(monkeypatch, f"http://127.0.0.1:{s.getsockname()[1]}")
        yield _factory()
    from hiddenscope_ui.settings import get_settings

    get_settings.cache_clear()


def _factory() -> Callable[..., AppTest]:
    def make(page: str = "datasets", **query: str) -> AppTest:
        at = AppTest.from_file(str(APP), default_timeout=60)
        for key, value in query.items():
            at.query_params[key] = value
        if page != "datasets":
            at.switch_page(f"views/{page}.py")
        return at.run()

    return make
