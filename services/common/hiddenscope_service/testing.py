"""Helpers for integration tests against real processes (no mocks, no eager Celery).

Used by the pytest fixtures in ``tests/services/conftest.py``; usable from any service's tests:

* :class:`RedisServer` — a real ``redis-server`` on a free loopback port in a temp dir
  (no persistence, ``noeviction``). Fails with a clear message if the binary is missing
  (``make setup`` installs it).
* :func:`start_celery_worker` — ``celery -A <app> worker`` as a subprocess; waits until it is ready.
* :func:`start_uvicorn` — ``uvicorn --factory <module:create_app>`` on a free port; waits until a
  health path answers.

Every helper returns a :class:`ManagedProcess` whose log file is kept for failure messages and
which is stopped (terminate, then kill) by ``stop()``; ``kill()`` sends SIGKILL (chaos tests).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ManagedProcess:
    """A subprocess started by a helper; its stdout+stderr go to ``log_path``."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    url: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self, tail: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process group, wait, then SIGKILL whatever is left."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        # the group may hold children (Celery pool processes) even after the parent exited
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)

    def kill(self) -> None:
        """SIGKILL the whole process group at once (simulates a crash)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)


def _spawn(
    name: str,
    argv: Sequence[str],
    log_path: Path,
    env: Mapping[str, str] | None,
    cwd: Path | None,
) -> ManagedProcess:
    full_env = dict(os.environ)
    full_env.update(env or {})
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=cwd,
            start_new_session=True,  # own process group: stop()/kill() reach the children
        )
    return ManagedProcess(name=name, popen=popen, log_path=log_path)


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
        self.process = _spawn("redis", argv, self.workdir / "redis.log", None, None)
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
    proc = _spawn(name, argv, log_path, env, cwd)
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
    proc = _spawn("uvicorn", argv, log_path, env, cwd)
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
