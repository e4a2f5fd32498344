"""The gateway's route table sends every path of each service's OpenAPI document to that
service (a drift check: a new route in ingest or match that the table misroutes fails here),
and the one job resource ``/v1/jobs/{id}`` to the service the job id's kind names."""

from __future__ import annotations

import pytest
from hiddenscope_gateway.settings import GatewaySettings, Route
from hiddenscope_service.jobs import job_kind, new_job_id

METHODS = {"get", "post", "put", "patch", "delete"}


def _paths(app_module: str) -> list[tuple[str, str]]:
    module = pytest.importorskip(app_module)
    schema = module.create_app().openapi()
    return [
        (method.upper(), path)
        for path, ops in schema["paths"].items()
        for method in ops
        if method in METHODS and path.startswith("/v1/")
    ]


@pytest.mark.parametrize(
    ("service", "app_module"),
    [("ingest", "hiddenscope_ingest.app"), ("match", "hiddenscope_match.app")],
)
def test_every_api_path_goes_to_its_service(service: str, app_module: str) -> None:
    settings = GatewaySettings()
    paths = _paths(app_module)
    assert paths
    wrong = []
    for method, path in paths:
        # a job id of this service's kind (the job resource is shared, routed by that kind)
        concrete = path.replace("{job_id}", new_job_id(service))
        route = settings.route_for(method, concrete.replace("{", "x").replace("}", "x"))
        if route is None or route.upstream != service:
            wrong.append(f"{method} {path} -> {route.upstream if route else None}")
    assert not wrong, f"misrouted {service} paths: {wrong}"


def test_prefix_routes_and_unknown_paths() -> None:
    s = GatewaySettings()
    assert s.route_for("POST", "/v1/datasets").upstream == "ingest"  # type: ignore[union-attr]
    assert s.route_for("DELETE", "/v1/datasets/abc").upstream == "ingest"  # type: ignore[union-attr]
    assert s.route_for("POST", "/v1/datasets/abc/matches").upstream == "match"  # type: ignore[union-attr]
    # a dataset's tracks: changed by ingest (a new version), read by match
    assert s.route_for("POST", "/v1/datasets/abc/tracks").upstream == "ingest"  # type: ignore[union-attr]
    assert s.route_for("DELETE", "/v1/datasets/abc/tracks/pos").upstream == "ingest"  # type: ignore[union-attr]
    assert s.route_for("GET", "/v1/datasets/abc/tracks/pos").upstream == "match"  # type: ignore[union-attr]
    assert s.route_for("GET", "/v1/jobs/j1").upstream == "ingest"  # type: ignore[union-attr]
    assert s.route_for("GET", "/v1/match-jobs/j1") is None  # the old path is gone
    assert s.route_for("POST", "/v1/datasets/abc") is None
    assert s.route_for("GET", "/v2/anything") is None


@pytest.mark.parametrize("kind", ["ingest", "match"])
def test_job_ids_route_by_kind(kind: str) -> None:
    s = GatewaySettings()
    for _ in range(200):  # the random part may hold '-' and '_'
        job_id = new_job_id(kind)
        assert job_kind(job_id) == kind
        for method, path in [("GET", f"/v1/jobs/{job_id}"), ("DELETE", f"/v1/jobs/{job_id}"),
                             ("POST", f"/v1/jobs/{job_id}/cancel")]:  # fmt: skip
            assert s.route_for(method, path).upstream == kind, path  # type: ignore[union-attr]


def test_glob_segments() -> None:
    r = Route(path="/v1/jobs/match-*/**", upstream="match")
    assert r.matches("POST", "/v1/jobs/match-abc/cancel")
    assert not r.matches("POST", "/v1/jobs/match-abc")
    assert not r.matches("POST", "/v1/jobs/ingest-match-abc/cancel")
