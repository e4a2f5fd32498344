"""Read ``deploy/docker-compose.yml`` into plain service specs (what the local runner needs).

Supports what the project's compose file uses: YAML anchors and merge keys, ``${VAR}``,
``${VAR:-default}``, ``${VAR-default}`` and ``$$`` interpolation (values from the process
environment first, then the ``.env`` file, like compose), exec-form ``command``, ``environment``
as a mapping or a list, ``expose``, ``ports``, named-volume mounts, ``depends_on`` (list or
mapping with ``condition``), ``healthcheck.test``. Nothing else of the compose spec is
interpreted.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class ComposeError(ValueError):
    """The compose file cannot be read or uses something the runner does not support."""


def read_env_file(path: Path | None) -> dict[str, str]:
    """``KEY=value`` lines of a ``.env`` file (``#`` comments, optional quotes); ``{}`` if it is
    absent."""
    if path is None or not path.is_file():
        return {}
    out: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        key = key.strip().removeprefix("export ").strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key] = value
    return out


def interpolate(value: str, variables: Mapping[str, str]) -> str:
    """Compose's variable substitution on one string."""

    def sub(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$"
        name = m.group("braced") or m.group("bare")
        got = variables.get(name)
        op = m.group("op")
        if op == ":-" and not got:
            return m.group("default") or ""
        if op == "-" and got is None:
            return m.group("default") or ""
        return got or ""

    return _VAR.sub(sub, value)


def _interpolate_tree(node: Any, variables: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, variables)
    if isinstance(node, list):
        return [_interpolate_tree(x, variables) for x in node]
    if isinstance(node, dict):
        return {k: _interpolate_tree(v, variables) for k, v in node.items()}
    return node


@dataclass(frozen=True)
class VolumeMount:
    source: str  # a named volume
    target: str  # the path inside the container


@dataclass
class ServiceSpec:
    """One compose service, interpolated."""

    name: str
    command: list[str]
    environment: dict[str, str] = field(default_factory=dict)
    expose: list[int] = field(default_factory=list)
    ports: list[str] = field(default_factory=list)
    volumes: list[VolumeMount] = field(default_factory=list)
    depends_on: dict[str, str] = field(default_factory=dict)  # service -> condition
    healthcheck: list[str] | None = None  # the `test`: ["CMD", ...] / ["CMD-SHELL", "..."]
    image: str | None = None
    build_context: Path | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def port(self) -> int | None:
        """The one port the service listens on (``expose[0]``), if any."""
        return self.expose[0] if self.expose else None

    def published_port(self) -> int | None:
        """The host port that ``ports`` maps to the service's port, if published."""
        for spec in self.ports:
            parts = str(spec).split(":")
            if len(parts) >= 2 and self.port is not None and parts[-1] == str(self.port):
                return int(parts[-2])
        return None


@dataclass
class ComposeFile:
    path: Path
    services: dict[str, ServiceSpec]
    volumes: list[str]
    raw: dict[str, Any]

    def order(self) -> list[list[str]]:
        """Services in start waves: each wave depends only on earlier waves.

        Raises ``ComposeError`` on an unknown dependency or a cycle."""
        left = dict(self.services)
        done: set[str] = set()
        waves: list[list[str]] = []
        while left:
            wave = [n for n, s in left.items() if set(s.depends_on) <= done]
            if not wave:
                raise ComposeError(f"depends_on has a cycle among {sorted(left)}")
            waves.append(sorted(wave))
            for n in wave:
                done.add(n)
                del left[n]
        return waves


def _environment(node: Any) -> dict[str, str]:
    if node is None:
        return {}
    if isinstance(node, dict):
        return {str(k): "" if v is None else str(v) for k, v in node.items()}
    if isinstance(node, list):
        out = {}
        for item in node:
            key, _, value = str(item).partition("=")
            out[key] = value
        return out
    raise ComposeError(f"environment must be a mapping or a list, got {type(node).__name__}")


def _volumes(node: Any, named: set[str], service: str) -> list[VolumeMount]:
    mounts = []
    for item in node or []:
        if isinstance(item, dict):
            source, target = item.get("source"), item.get("target")
        else:
            source, _, rest = str(item).partition(":")
            target = rest.split(":")[0]
        if not source or not target:
            raise ComposeError(f"service {service}: cannot read volume {item!r}")
        if source not in named:
            raise ComposeError(
                f"service {service}: volume {source!r} is not a named volume of the file "
                "(the runner supports named volumes only)"
            )
        mounts.append(VolumeMount(str(source), str(target)))
    return mounts


def load_compose(
    path: Path,
    env_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> ComposeFile:
    """Parse and interpolate the compose file at ``path``.

    ``env_file`` defaults to ``.env`` beside the compose file; ``environ`` to ``os.environ``
    (it wins over the file, as in compose).

    Raises ``ComposeError`` for what the runner cannot run (shell-form commands, bind mounts,
    unknown dependencies).
    """
    path = Path(path)
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict) or not isinstance(raw.get("services"), dict):
        raise ComposeError(f"{path}: no services")
    variables = read_env_file(env_file if env_file is not None else path.parent / ".env")
    variables.update(os.environ if environ is None else environ)
    data = _interpolate_tree({k: v for k, v in raw.items() if not k.startswith("x-")}, variables)
    named = set((data.get("volumes") or {}).keys())
    services: dict[str, ServiceSpec] = {}
    for name, node in data["services"].items():
        command = node.get("command")
        if not isinstance(command, list) or not command:
            raise ComposeError(f"service {name}: command must be a non-empty list (exec form)")
        deps = node.get("depends_on") or {}
        if isinstance(deps, list):
            deps = dict.fromkeys(deps, "service_started")
        depends = {
            str(k): str((v or {}).get("condition", "service_started")) for k, v in deps.items()
        }
        health = (node.get("healthcheck") or {}).get("test")
        if isinstance(health, str):
            health = ["CMD-SHELL", health]
        build = node.get("build")
        context = build.get("context") if isinstance(build, dict) else build
        services[name] = ServiceSpec(
            name=name,
            command=[str(x) for x in command],
            environment=_environment(node.get("environment")),
            expose=[int(str(p).split("/")[0]) for p in node.get("expose") or []],
            ports=[str(p) for p in node.get("ports") or []],
            volumes=_volumes(node.get("volumes"), named, name),
            depends_on=depends,
            healthcheck=[str(x) for x in health] if health else None,
            image=node.get("image"),
            build_context=(path.parent / context).resolve() if context else None,
            raw=node,
        )
    for s in services.values():
        unknown = set(s.depends_on) - set(services)
        if unknown:
            raise ComposeError(f"service {s.name} depends on unknown {sorted(unknown)}")
    return ComposeFile(path=path, services=services, volumes=sorted(named), raw=raw)
