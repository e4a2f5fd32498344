"""The real API stack the client tests talk to (the UI tests' stack: redis, both services with
their workers, the gateway in front; the ``demo`` dataset of
:func:`tests.ui.helpers.write_demo`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hiddenscope_client import HiddenScopeClient

from tests.ui.helpers import UiStack, start_stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiStack]:
    s = start_stack(tmp_path_factory.mktemp("client-stack"))
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def client(stack: UiStack) -> Iterator[HiddenScopeClient]:
    with HiddenScopeClient(stack.url, timeout=60) as c:
        yield c
