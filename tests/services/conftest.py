"""Fixtures for service integration tests: a real ``redis-server`` (session-wide, loopback, free
port, temp dir) and factories for real Celery workers and uvicorn servers as subprocesses.

The helpers live in :mod:`hiddenscope_service.testing`; a service's own ``conftest.py`` builds its
stack from them, e.g.::

    @pytest.fixture(scope="session")
    def match_stack(redis_server, tmp_path_factory, service_env):
        env = service_env("HIDDENSCOPE_MATCH_", redis_server.url, data_root)
        worker = start_celery_worker("hiddenscope_match.tasks:celery_app", queues=["match"],
                                     log_path=..., env=env)
        api = start_uvicorn("hiddenscope_match.app:create_app", log_path=..., env=env)
        yield api, worker
        api.stop(); worker.stop()
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hiddenscope_service.testing import RedisServer


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server for the whole session (fails, never skips, if it is missing)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def service_env() -> Callable[..., dict[str, str]]:
    """``service_env(prefix, redis_url, data_root, **more)`` → the env of a service process
    (``more`` keys are upper-cased and prefixed)."""

    def build(prefix: str, redis_url: str, data_root: Path, **more: object) -> dict[str, str]:
        env = {
            f"{prefix}REDIS_URL": redis_url,
            f"{prefix}DATA_ROOT": str(data_root),
            "PYTHONUNBUFFERED": "1",
        }
        for key, value in more.items():
            env[f"{prefix}{key.upper()}"] = str(value)
        return env

    return build
