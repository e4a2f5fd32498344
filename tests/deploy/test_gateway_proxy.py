"""The gateway over real HTTP: a real upstream (uvicorn) behind the gateway (uvicorn), both as
processes. A proxied response carries each header once — the gateway's own server sets ``date``
and ``server``, so the upstream's are not passed on — and keeps every value of a repeated one."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hiddenscope_service.processes import ManagedProcess
from hiddenscope_service.testing import start_uvicorn

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    logs = tmp_path_factory.mktemp("gateway")
    processes: list[ManagedProcess] = []
    try:
        upstream = start_uvicorn("tests.deploy.echo_upstream:create_app",
                                 log_path=logs / "upstream.log", cwd=REPO)  # fmt: skip
        processes.append(upstream)
        assert upstream.url is not None
        env = {"HIDDENSCOPE_GATEWAY_INGEST_URL": upstream.url,
               "HIDDENSCOPE_GATEWAY_MATCH_URL": upstream.url}  # fmt: skip
        proxy = start_uvicorn("hiddenscope_gateway.app:create_app", log_path=logs / "gw.log",
                              env=env, health_path="/livez")  # fmt: skip
        processes.append(proxy)
        assert proxy.url is not None
        yield proxy.url
    finally:
        for process in reversed(processes):
            process.stop()


def _names(response: httpx.Response) -> Counter[str]:
    return Counter(name.decode("latin-1").lower() for name, _ in response.headers.raw)


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/datasets"), ("POST", "/v1/datasets"), ("GET", "/v1/datasets/d/info"),
     ("GET", "/match/healthz")],
)  # fmt: skip
def test_each_header_once(gateway: str, method: str, path: str) -> None:
    r = httpx.request(method, gateway + path)
    assert r.status_code == 200
    assert r.json()["path"] == path.removeprefix("/match")
    names = _names(r)
    for name in ("date", "server", "content-type", "content-length"):
        assert names[name] == 1, f"{name} appears {names[name]} times: {r.headers.raw}"


def test_repeated_header_keeps_every_value(gateway: str) -> None:
    r = httpx.get(gateway + "/v1/datasets")
    assert r.headers.get_list("vary") == ["accept", "origin"]


def test_own_answers_carry_each_header_once(gateway: str) -> None:
    for path in ("/", "/livez", "/v1/nothing-here"):
        names = _names(httpx.get(gateway + path))
        assert names["date"] == 1
        assert names["server"] == 1
