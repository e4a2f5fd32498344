"""The compose file, the Dockerfile and ``.env.example`` say what the deployment promises, and
the local runner reads them the way compose would (no Docker needed: PyYAML only)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hiddenscope_stack.compose import interpolate, load_compose
from hiddenscope_stack.runner import Stack

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
APPS = ["ingest-api", "ingest-worker", "match-api", "match-worker", "gateway", "ui"]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def test_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"redis", *APPS}
    for name in APPS:
        svc = compose["services"][name]
        assert svc["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        assert svc["image"].startswith("hiddenscope:")
        assert isinstance(svc["command"], list), f"{name}: exec-form command"
    # workers scale with --scale: no fixed name, no published port
    for name in ("ingest-worker", "match-worker"):
        svc = compose["services"][name]
        assert "container_name" not in svc
        assert "ports" not in svc
        assert "-n" in svc["command"]
        assert svc["command"][svc["command"].index("-n") + 1].endswith("@%h")
    # only the gateway and the UI are published, on loopback unless configured otherwise
    published = {n for n, s in compose["services"].items() if s.get("ports")}
    assert published == {"gateway", "ui"}
    for name in published:
        (port,) = compose["services"][name]["ports"]
        assert port.startswith("${HIDDENSCOPE_BIND:-127.0.0.1}:")


def test_redis_is_durable_and_never_evicts(compose: dict[str, Any]) -> None:
    cmd = compose["services"]["redis"]["command"]
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert cmd[cmd.index("--maxmemory-policy") + 1] == "noeviction"
    assert compose["services"]["redis"]["volumes"] == ["redis-data:/data"]


def test_healthchecks_and_dependencies(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, svc in services.items():
        test = svc["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL"), name
        exposed = svc.get("expose", [])
        if exposed and name != "redis":
            assert f"127.0.0.1:{exposed[0]}/" in " ".join(test), f"{name} checks its own port"
    expected = {
        "ingest-api": {"redis"},
        "ingest-worker": {"redis"},
        "match-api": {"redis"},
        "match-worker": {"redis"},
        "gateway": {"ingest-api", "match-api"},
        "ui": {"gateway"},
    }
    for name, deps in expected.items():
        got = services[name]["depends_on"]
        assert set(got) == deps, name
        assert all(d["condition"] == "service_healthy" for d in got.values()), name


def test_data_volume_and_environment(compose: dict[str, Any]) -> None:
    assert set(compose["volumes"]) == {"data", "redis-data"}
    services = compose["services"]
    for name in ("ingest-api", "ingest-worker"):
        env = services[name]["environment"]
        assert services[name]["volumes"] == ["data:/data"]
        assert env["HIDDENSCOPE_INGEST_DATA_ROOT"] == "/data"
        assert env["HIDDENSCOPE_INGEST_REDIS_URL"] == "redis://redis:6379/0"
    for name in ("match-api", "match-worker"):
        env = services[name]["environment"]
        assert services[name]["volumes"] == ["data:/data"]
        assert env["HIDDENSCOPE_MATCH_DATA_ROOT"] == "/data"
        assert env["HIDDENSCOPE_MATCH_REDIS_URL"] == "redis://redis:6379/1"
    gw = services["gateway"]["environment"]
    assert gw["HIDDENSCOPE_GATEWAY_INGEST_URL"] == "http://ingest-api:8001"
    assert gw["HIDDENSCOPE_GATEWAY_MATCH_URL"] == "http://match-api:8002"
    assert services["ui"]["environment"]["HIDDENSCOPE_UI_API_URL"] == "http://gateway:8080"


def test_env_example_documents_every_variable() -> None:
    # ${VAR} the file reads from the environment (not $${VAR}: escaped for the container shell)
    used = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", COMPOSE.read_text()))
    documented = set(
        re.findall(r"^#?\s*([A-Z0-9_]+)=", (DEPLOY / ".env.example").read_text(), re.M)
    )
    assert used, "the compose file uses no variables?"
    assert used <= documented, f"not in deploy/.env.example: {sorted(used - documented)}"


def test_dockerfile() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    assert "uv sync --frozen" in text
    assert re.search(r"^USER app$", text, re.M)
    assert "COPY pyproject.toml uv.lock" in text


def test_interpolation_like_compose() -> None:
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("${SET:-d}/${UNSET:-d}/${EMPTY:-d}/${EMPTY-d}/$$HOME/$SET", env) == (
        "x/d/d//$HOME/x"
    )


def test_local_plan_maps_hosts_ports_and_volumes(tmp_path: Path) -> None:
    stack = Stack(compose_path=COMPOSE, state_dir=tmp_path, free_ports=True, log=lambda _: None)
    plan = {svc.spec.name: svc for svc in stack.plan()}
    assert set(plan) | set(stack.skipped) == {"redis", *APPS}
    redis_port = stack.ports["redis"]
    ingest = plan["ingest-api"]
    assert ingest.env["HIDDENSCOPE_INGEST_REDIS_URL"] == f"redis://127.0.0.1:{redis_port}/0"
    assert ingest.env["HIDDENSCOPE_INGEST_DATA_ROOT"] == str(tmp_path / "volumes" / "data")
    assert "0.0.0.0" not in ingest.argv
    assert "8001" not in ingest.argv
    assert ingest.argv[ingest.argv.index("--port") + 1] == str(stack.ports["ingest-api"])
    redis = plan["redis"]
    assert redis.argv[redis.argv.index("--dir") + 1] == str(tmp_path / "volumes" / "redis-data")
    gw = plan["gateway"].env
    assert gw["HIDDENSCOPE_GATEWAY_INGEST_URL"] == f"http://127.0.0.1:{stack.ports['ingest-api']}"
    if "ingest-worker" in plan:
        worker = plan["ingest-worker"]
        assert "ingest-worker@ingest-worker-1" in worker.argv
        assert worker.health is not None
        assert "ingest-worker@ingest-worker-1" in worker.health[1]
    # the compose healthcheck of an HTTP service names the local port after mapping
    assert plan["gateway"].health == [
        "CMD",
        "python",
        "-m",
        "hiddenscope_stack.probe",
        f"http://127.0.0.1:{stack.ports['gateway']}/livez",
    ]


def test_order_follows_depends_on() -> None:
    waves = load_compose(COMPOSE).order()
    assert waves[0] == ["redis"]
    flat = [n for wave in waves for n in wave]
    assert flat.index("gateway") > flat.index("match-api")
    assert flat[-1] == "ui"
