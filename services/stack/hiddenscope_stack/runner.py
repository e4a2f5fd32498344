"""Run the compose services as local processes (no Docker).

For every service of the compose file the runner:

* runs its exec-form ``command`` (``uvicorn``, ``celery``, ``streamlit``, ``python`` from this
  interpreter's environment; ``redis-server`` from ``PATH``) in the build context (the repository
  root, the image's ``WORKDIR``), each in its own process group, output to ``<state>/logs/``;
* maps host names and ports: ``<service>:<port>`` becomes ``127.0.0.1:<local port>``, the local
  port being the published host port (or the ``expose``d one) when it is free and a free port
  otherwise (always a free one with ``free_ports=True``); ``0.0.0.0`` binds become ``127.0.0.1``;
* maps each named volume to ``<state>/volumes/<name>`` (paths under the mount target are
  rewritten), and ``%h`` / ``$HOSTNAME`` to ``<service>-<replica>``;
* starts services in ``depends_on`` waves and waits for each one's own ``healthcheck`` (run
  locally with the same rewriting; the project's HTTP probe and ``redis-cli ping`` are answered
  in-process);
* stops everything in reverse order: SIGTERM to each process group, SIGKILL after a grace period.

A service whose code is not in this checkout yet (an ``-A``/factory module that cannot be
imported, or a missing ``.py`` script) is skipped with a warning, and its dependents start
without it. Without a ``redis-server`` binary the ``redis`` service falls back to an embedded
fakeredis server (:mod:`hiddenscope_stack.embedded_redis`: in memory, not durable; the workers
of both services run against it) when the project's ``stack`` extra (``fakeredis[lua]``) is
installed, else the runner stops with a message saying how to install Redis.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import redis
from hiddenscope_service.processes import ManagedProcess, free_port, spawn

from hiddenscope_stack.compose import ComposeFile, ServiceSpec, load_compose
from hiddenscope_stack.probe import probe

PORT_FLAGS = frozenset({"--port", "-p", "--server.port"})
BIND_ANY = "0.0.0.0"
LOOPBACK = "127.0.0.1"


def repo_root() -> Path:
    """The checkout this package runs from (``services/stack/hiddenscope_stack`` → root)."""
    return Path(__file__).resolve().parents[3]


def default_compose_path() -> Path:
    return repo_root() / "deploy" / "docker-compose.yml"


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


class StackError(RuntimeError):
    """A service could not be started or did not become healthy."""


@dataclass
class LocalService:
    """A compose service translated for this machine."""

    spec: ServiceSpec
    replica: int
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    health: list[str] | None
    port: int | None
    log_path: Path
    process: ManagedProcess | None = None

    @property
    def id(self) -> str:
        return f"{self.spec.name}-{self.replica}"

    @property
    def url(self) -> str | None:
        return f"http://{LOOPBACK}:{self.port}" if self.port is not None else None


@dataclass
class Stack:
    """The whole product as local processes, planned from a compose file.

    ``up()`` starts it (returns when every started service is healthy), ``down()`` stops it;
    also a context manager. ``urls`` maps each service with a port to its local base URL.
    """

    compose_path: Path = field(default_factory=default_compose_path)
    state_dir: Path = field(default_factory=lambda: repo_root() / "data" / "stack")
    env_file: Path | None = None
    free_ports: bool = False
    scale: Mapping[str, int] = field(default_factory=dict)
    only: list[str] | None = None  # start these services (and what they depend on) only
    extra_env: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # service -> env
    start_timeout: float = 180.0
    log: Callable[[str], None] = field(default=print)
    compose: ComposeFile = field(init=False)
    ports: dict[str, int] = field(init=False, default_factory=dict)
    skipped: dict[str, str] = field(init=False, default_factory=dict)  # service -> why
    running: list[LocalService] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.compose = load_compose(self.compose_path, self.env_file)
        self.state_dir = Path(self.state_dir).resolve()

    # ------------------------------------------------------------------ planning

    @property
    def urls(self) -> dict[str, str]:
        """Local base URL of each started service with a port (``redis://`` for Redis)."""
        out = {}
        for name, port in self.ports.items():
            is_redis = self.compose.services[name].command[0].endswith("redis-server")
            scheme = "redis" if is_redis else "http"
            out[name] = f"{scheme}://{LOOPBACK}:{port}"
        return out

    def _wanted(self) -> set[str]:
        names = set(self.compose.services)
        if not self.only:
            return names
        want: set[str] = set()
        todo = list(self.only)
        while todo:
            n = todo.pop()
            if n not in names:
                raise StackError(f"no service {n!r} in {self.compose_path}")
            if n not in want:
                want.add(n)
                todo.extend(self.compose.services[n].depends_on)
        return want

    def _plan_ports(self, wanted: set[str]) -> None:
        taken: set[int] = set()
        for name in sorted(wanted):
            spec = self.compose.services[name]
            if spec.port is None:
                continue
            preferred = spec.published_port() or spec.port
            if not self.free_ports and preferred not in taken and port_is_free(preferred):
                port = preferred
            else:
                port = free_port()
                while port in taken:
                    port = free_port()
            taken.add(port)
            self.ports[name] = port

    def _rewrite(self, spec: ServiceSpec, replica: int, value: str) -> str:
        """One string of a service (argument, env value, healthcheck) for this machine."""
        host = f"{spec.name}-{replica}"
        for other, port in self.ports.items():
            o = self.compose.services[other]
            value = re.sub(
                rf"(?<![\w.-]){re.escape(other)}:{o.port}(?!\d)", f"{LOOPBACK}:{port}", value
            )
            published = o.published_port()
            if published is not None:
                value = re.sub(rf"\blocalhost:{published}(?!\d)", f"localhost:{port}", value)
        own = self.ports.get(spec.name)
        if own is not None:
            value = re.sub(
                rf"\b(?:localhost|127\.0\.0\.1|0\.0\.0\.0):{spec.port}(?!\d)",
                f"{LOOPBACK}:{own}",
                value,
            )
        for mount in spec.volumes:
            local = str(self.state_dir / "volumes" / mount.source)
            if value == mount.target or value.startswith(mount.target + "/"):
                value = local + value[len(mount.target) :]
            value = re.sub(rf"(?<=[=\s:]){re.escape(mount.target)}(?=/|\s|$)", local, value)
        value = value.replace("%h", host).replace("${HOSTNAME}", host).replace("$HOSTNAME", host)
        return LOOPBACK if value == BIND_ANY else value

    def _argv(self, spec: ServiceSpec, replica: int, command: list[str]) -> list[str]:
        out = []
        own = self.ports.get(spec.name)
        for i, arg in enumerate(command):
            if own is not None and i > 0 and command[i - 1] in PORT_FLAGS and arg == str(spec.port):
                out.append(str(own))
            else:
                out.append(self._rewrite(spec, replica, arg))
        return out

    def _executable(self, name: str) -> str | None:
        if "/" in name:
            return name
        venv_bin = str(Path(sys.executable).parent)
        if name in ("python", "python3"):
            return sys.executable
        return shutil.which(name, path=venv_bin + os.pathsep + os.environ.get("PATH", ""))

    def _missing_code(self, spec: ServiceSpec, cwd: Path) -> str | None:
        """Why the service's code is not in this checkout, or ``None`` if it is."""
        for i, arg in enumerate(spec.command):
            prev = spec.command[i - 1] if i else ""
            target = None
            if prev in ("-A", "--app") or (":" in arg and re.fullmatch(r"[\w.]+:\w+", arg)):
                target = arg.split(":")[0]
            if target:
                try:
                    found = importlib.util.find_spec(target) is not None
                except ModuleNotFoundError:
                    found = False
                if not found:
                    return f"module {target} is not importable"
            if arg.endswith(".py") and not arg.startswith("/") and not (cwd / arg).is_file():
                return f"{arg} does not exist"
        return None

    def plan(self) -> list[LocalService]:
        """The local processes to start, in start order (``depends_on`` waves)."""
        wanted = self._wanted()
        self._plan_ports(wanted)
        out: list[LocalService] = []
        for wave in self.compose.order():
            for name in wave:
                if name not in wanted:
                    continue
                spec = self.compose.services[name]
                cwd = spec.build_context or self.compose_path.parent
                why = self._missing_code(spec, cwd)
                if why:
                    self.skipped[name] = why
                    self.ports.pop(name, None)
                    continue
                replicas = self.scale.get(name, 1)
                if replicas > 1 and spec.port is not None:
                    raise StackError(f"{name} listens on a port: it cannot be scaled locally")
                for replica in range(1, replicas + 1):
                    out.append(self._local(spec, replica, cwd))
        return out

    def _local(self, spec: ServiceSpec, replica: int, cwd: Path) -> LocalService:
        argv = self._argv(spec, replica, spec.command)
        env = {k: self._rewrite(spec, replica, v) for k, v in spec.environment.items()}
        env.update(self.extra_env.get(spec.name, {}))
        env["HOSTNAME"] = f"{spec.name}-{replica}"
        health = None
        if spec.healthcheck and spec.healthcheck[0] != "NONE":
            health = [spec.healthcheck[0], *self._argv(spec, replica, spec.healthcheck[1:])]
        exe = self._executable(argv[0])
        if exe is None and argv[0] == "redis-server":
            argv = self._embedded_redis(argv)
        elif exe is None:
            raise StackError(f"{spec.name}: {argv[0]!r} is not installed")
        else:
            argv[0] = exe
        return LocalService(
            spec=spec,
            replica=replica,
            argv=argv,
            env=env,
            cwd=cwd,
            health=health,
            port=self.ports.get(spec.name),
            log_path=self.state_dir / "logs" / f"{spec.name}-{replica}.log",
        )

    def _embedded_redis(self, argv: list[str]) -> list[str]:
        if (
            importlib.util.find_spec("fakeredis") is None
            or importlib.util.find_spec("lupa") is None
        ):
            raise StackError(
                "redis-server is not installed and the embedded fallback needs the project's "
                "'stack' extra (fakeredis[lua]: `uv sync --all-extras`): install Redis "
                "(`apt-get install redis-server`; `make setup` does it)"
            )
        port = argv[argv.index("--port") + 1] if "--port" in argv else "6379"
        self.log(
            "redis-server not found: using the embedded fakeredis server (in memory: queued "
            "jobs and job records are lost when it stops)"
        )
        return [sys.executable, "-m", "hiddenscope_stack.embedded_redis", "--port", port]

    # ------------------------------------------------------------------ running

    def _spawn(self, svc: LocalService) -> ManagedProcess:
        for mount in svc.spec.volumes:
            (self.state_dir / "volumes" / mount.source).mkdir(parents=True, exist_ok=True)
        # appended: a restarted stack keeps the earlier runs' logs
        process = spawn(
            svc.id, svc.argv, log_path=svc.log_path, env=svc.env, cwd=svc.cwd, append=True
        )
        process.url = svc.url
        return process

    def _healthy_once(self, svc: LocalService) -> bool:
        test = svc.health
        if not test:
            return True
        kind, args = test[0], test[1:]
        # fast paths: the project's HTTP probe and redis-cli ping, answered in-process
        if kind == "CMD" and len(args) >= 4 and args[1:3] == ["-m", "hiddenscope_stack.probe"]:
            return probe(args[3], timeout=5.0)
        if kind == "CMD" and args and Path(args[0]).name == "redis-cli" and args[-1] == "ping":
            port = args[args.index("-p") + 1] if "-p" in args else "6379"
            try:
                return bool(redis.Redis(host=LOOPBACK, port=int(port), socket_timeout=2).ping())
            except (redis.RedisError, ValueError):
                return False
        env = dict(os.environ)
        env.update(svc.env)
        if kind == "CMD-SHELL":
            argv = ["/bin/sh", "-c", " ".join(args)]
        else:
            exe = self._executable(args[0]) or args[0]
            argv = [exe, *args[1:]]
        try:
            done = subprocess.run(
                argv, cwd=svc.cwd, env=env, capture_output=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return done.returncode == 0

    def _wait_healthy(self, svc: LocalService, deadline: float) -> None:
        assert svc.process is not None
        while True:
            if not svc.process.alive():
                raise StackError(f"{svc.id} exited during start:\n{svc.process.log()}")
            if self._healthy_once(svc):
                return
            if time.monotonic() > deadline:
                raise StackError(f"{svc.id} did not become healthy in time:\n{svc.process.log()}")
            time.sleep(0.3)

    def up(self) -> Stack:
        """Start every service; return when all are healthy. On failure everything started is
        stopped again and ``StackError`` is raised (with the failing service's log)."""
        services = self.plan()
        for name, why in self.skipped.items():
            self.log(f"skipping {name}: {why}")
        try:
            waves: dict[int, list[LocalService]] = {}
            order = {n: i for i, wave in enumerate(self.compose.order()) for n in wave}
            for svc in services:
                waves.setdefault(order[svc.spec.name], []).append(svc)
            for _, wave in sorted(waves.items()):
                for svc in wave:
                    svc.process = self._spawn(svc)
                    self.running.append(svc)
                    self.log(f"started {svc.id} (pid {svc.process.pid}) log {svc.log_path}")
                deadline = time.monotonic() + self.start_timeout
                with concurrent.futures.ThreadPoolExecutor(max_workers=len(wave)) as pool:
                    for f in [pool.submit(self._wait_healthy, s, deadline) for s in wave]:
                        f.result()
                self.log("healthy: " + ", ".join(s.id for s in wave))
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        """Stop every started process: reverse start order, SIGTERM the group, then SIGKILL."""
        for svc in reversed(self.running):
            if svc.process is not None:
                svc.process.stop(timeout=20.0)
        self.running.clear()

    def dead(self) -> list[LocalService]:
        """Started services whose process has exited."""
        return [s for s in self.running if s.process is not None and not s.process.alive()]

    def __enter__(self) -> Stack:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()


@contextlib.contextmanager
def signals_raise_keyboard_interrupt() -> Iterator[None]:
    """Turn the first SIGINT/SIGTERM/SIGHUP into ``KeyboardInterrupt`` (so ``down()`` runs for
    each as for Ctrl-C) and ignore the ones that follow while the stack stops (a second Ctrl-C
    must not abandon processes half-way through the shutdown)."""
    interrupted = False

    def handler(signum: int, frame: object) -> None:
        nonlocal interrupted
        if not interrupted:
            interrupted = True
            raise KeyboardInterrupt

    caught = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {s: signal.signal(s, handler) for s in caught}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
