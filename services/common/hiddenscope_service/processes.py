"""Processes the project starts itself: :class:`ManagedProcess` (a subprocess in its own process
group, output to a log file, stopped with the children it forked) and :func:`spawn`, which starts
one; :func:`free_port` picks a loopback port.

Used by the local stack (:mod:`hiddenscope_stack.runner`) and the integration-test helpers
(:mod:`hiddenscope_service.testing`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ManagedProcess:
    """A subprocess started by :func:`spawn`; its stdout+stderr go to ``log_path``."""

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


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    append: bool = False,
) -> ManagedProcess:
    """Start ``argv`` in its own process group (so ``stop()``/``kill()`` reach its children),
    stdin closed, stdout and stderr to ``log_path`` (appended to with ``append``, else truncated).
    ``env`` is added to this process's environment."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab" if append else "wb") as log:
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
