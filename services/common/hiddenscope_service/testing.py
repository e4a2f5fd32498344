"""Helpers for integration tests against real processes (no mocks, no eager Celery).

Used by the pytest fixtures in ``tests/services/conftest.py``; usable from any service's tests:

* :class:`RedisServer` — a real ``redis-server`` on a free loopback port in a temp dir
  (no persistence, ``noeviction``). Fails with a clear message if the binary is missing
  (``make setup`` installs it).
* :func:`start_celery_worker` — ``celery -A <app> worker`` as a subprocess; waits until it is ready.
* :func:`start_uvicorn` — ``uvicorn --factory <module:create_app>`` on a free port; waits until a
  health path answers.

Every helper returns a :class:`~hiddenscope_service.processes.ManagedProcess` whose log file is
kept for failure messages and which is stopped (terminate, then kill) by ``stop()``; ``kill()``
sends SIGKILL (chaos tests).
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx
import redis

from hiddenscope_service.processes import ManagedProcess, free_port, spawn


class RedisServer:
    """A throwaway ``redis-server`` bound to 127.0.0.1 on a free port, data in ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: ManagedProcess | None = None

    def start(self, timeout: float = 20.0) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed; the integration tests need a real Redis "
                "(`make setup` installs it, or `apt-get install redis-server`)"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.workdir),
            "--save", "",
            "--appendonly", "no",
            "--maxmemory-policy", "noeviction",
            "--protected-mode", "yes",
            "--daemonize", "no",
        ]  # fmt: skip
        self.process = spawn("redis", argv, log_path=self.workdir / "redis.log")
        self.process.url = self.url
        deadline = time.monotonic() + timeout
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        while True:
            try:
                if client.ping():
                    return self
            except redis.RedisError:
                pass
            if not self.process.alive() or time.monotonic() > deadline:
                log = self.process.log()
                self.stop()
                raise RuntimeError(f"redis-server did not start:\n{log}")
            time.sleep(0.05)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


def start_celery_worker(
    app: str,
    *,
    queues: Sequence[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    concurrency: int = 1,
    name: str = "worker",
    timeout: float = 60.0,
) -> ManagedProcess:
    """Start ``celery -A app worker -Q queues`` (prefork pool) and wait until it is ready.

    ``app`` is what ``celery -A`` takes (``hiddenscope_ingest.tasks:celery_app``). The worker's
    node name is ``{name}-{port-like suffix}@127.0.0.1`` so that several can run at once.
    """
    node = f"{name}-{free_port()}@127.0.0.1"
    argv = [
        sys.executable, "-m", "celery", "-A", app, "worker",
        "-Q", ",".join(queues),
        "--concurrency", str(concurrency),
        "--pool", "prefork",
        "--loglevel", "INFO",
        "-n", node,
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    proc = spawn(name, argv, log_path=log_path, env=env, cwd=cwd)
    proc.extra["node"] = node
    deadline = time.monotonic() + timeout
    while " ready." not in proc.log(tail=1_000_000):
        if not proc.alive() or time.monotonic() > deadline:
            log = proc.log()
            proc.stop()
            raise RuntimeError(f"celery worker {node} did not become ready:\n{log}")
        time.sleep(0.1)
    return proc


def start_uvicorn(
    factory: str,
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    health_path: str = "/healthz",
    timeout: float = 60.0,
) -> ManagedProcess:
    """Start ``uvicorn --factory factory`` on a free loopback port; wait for ``health_path``.

    ``factory`` is ``module:function`` returning the ASGI app. ``proc.url`` is the base URL.
    """
    port = free_port()
    argv = [
        sys.executable, "-m", "uvicorn", factory, "--factory",
        "--host", "127.0.0.1", "--port", str(port),
        "--log-level", "info", "--no-access-log",
    ]  # fmt: skip
    proc = spawn("uvicorn", argv, log_path=log_path, env=env, cwd=cwd)
    proc.url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = httpx.get(proc.url + health_path, timeout=2)
            if r.status_code < 500:
                return proc
        except httpx.HTTPError:
            pass
        if not proc.alive() or time.monotonic() > deadline:
            log = proc.log()
            proc.stop()
            raise RuntimeError(f"uvicorn {factory} did not start:\n{log}")
        time.sleep(0.1)
