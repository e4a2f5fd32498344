"""Issue #5's bad-input clause for operators, with real processes: a wrong or empty setting
stops an API or a worker at start with a message naming the environment variable, and an API
that cannot reach Redis says so in ``/healthz`` (503) and is healthy again once Redis is back."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from hiddenscope_service.testing import RedisServer, start_celery_worker, start_uvicorn

APPS = {
    "ingest": ("HIDDENSCOPE_INGEST_", "hiddenscope_ingest"),
    "match": ("HIDDENSCOPE_MATCH_", "hiddenscope_match"),
}


@pytest.mark.parametrize(
    ("service", "variable", "value"),
    [
        ("ingest", "MAX_FILES", "many"),
        ("match", "SHARD_STEPS", "0"),
        ("match", "REDIS_URL", "localhost:6379"),
        ("ingest", "DATA_ROOT", ""),
    ],
)
def test_a_wrong_setting_stops_the_api_at_start(
    service: str, variable: str, value: str, tmp_path: Path
) -> None:
    prefix, module = APPS[service]
    env = {f"{prefix}DATA_ROOT": str(tmp_path), f"{prefix}{variable}": value}
    with pytest.raises(RuntimeError, match="did not start") as err:
        start_uvicorn(f"{module}.app:create_app", log_path=tmp_path / "api.log", env=env,
                      timeout=30)  # fmt: skip
    assert f"{prefix}{variable}: " in str(err.value), str(err.value)
    assert "SettingsError" in str(err.value)


@pytest.mark.parametrize("service", ["ingest", "match"])
def test_a_wrong_setting_stops_the_worker_at_start(service: str, tmp_path: Path) -> None:
    prefix, module = APPS[service]
    env = {
        f"{prefix}DATA_ROOT": str(tmp_path),
        f"{prefix}TASK_TIME_LIMIT": "600",
        f"{prefix}VISIBILITY_TIMEOUT": "60",
    }
    with pytest.raises(RuntimeError, match="did not become ready") as err:
        start_celery_worker(f"{module}.tasks:celery_app", queues=[service],
                            log_path=tmp_path / "worker.log", env=env, timeout=30)  # fmt: skip
    assert f"{prefix}TASK_TIME_LIMIT (600) must be below {prefix}VISIBILITY_TIMEOUT" in str(
        err.value
    )


def _health(url: str) -> tuple[int, dict[str, object]]:
    r = httpx.get(url + "/healthz", timeout=10)
    return r.status_code, r.json()


def _until(check: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_health_says_when_redis_is_gone_and_recovers(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    apis = []
    try:
        for service, (prefix, module) in APPS.items():
            env = {f"{prefix}DATA_ROOT": str(tmp_path / "data"), f"{prefix}REDIS_URL": redis.url}
            if service == "ingest":
                env[f"{prefix}RECONCILE_INTERVAL_SECONDS"] = "0"
            apis.append(start_uvicorn(f"{module}.app:create_app", env=env,
                                      log_path=tmp_path / f"{service}.log"))  # fmt: skip
        urls = [str(api.url) for api in apis]
        for url in urls:
            assert _health(url) == (200, {"status": "ok", "redis": True})

        redis.stop()
        for url in urls:
            status, body = _health(url)
            assert status == 503
            assert body["status"] == "degraded"
            assert body["redis"] is False
            assert f"cannot reach Redis at 127.0.0.1:{redis.port}" in str(body["detail"])

        redis.start()  # the same port
        for url in urls:
            _until(lambda url=url: _health(url)[0] == 200)  # type: ignore[misc]
            assert _health(url) == (200, {"status": "ok", "redis": True})
    finally:
        for api in apis:
            api.stop()
        redis.stop()
