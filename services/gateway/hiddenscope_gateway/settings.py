"""Settings of the gateway (env prefix ``HIDDENSCOPE_GATEWAY_``) and the route table.

The route table is the one place that says which service owns which path. Rules are tried in
order; the first whose method and path pattern match names the upstream. The paths follow the
services' own route modules: ingest owns the catalog (``/v1/datasets``, ``/v1/datasets/{id}``)
and the changes of a dataset's tracks (``POST /v1/datasets/{id}/tracks``, ``DELETE
/v1/datasets/{id}/tracks/{track}``: new versions); match owns everything else below a dataset
(``/v1/datasets/{id}/{info,layers/..,tokens,tracks/..,select,search,matches}``). Both kinds of
job share one resource, ``/v1/jobs/{id}[/cancel]``: a job id starts with its kind
(``match-…``, ``ingest-…``; :func:`hiddenscope_service.jobs.new_job_id`), so ``match-*`` ids go
to the match service and every other id to the ingest service — no lookup, no shared state.

Path patterns are ``/``-separated segments: a literal, ``{name}`` (exactly one segment), a glob
segment with ``*`` (``match-*``: one segment of that shape) or a trailing ``**`` (one or more
further segments).
"""

from __future__ import annotations

import fnmatch
import functools

from hiddenscope_service.settings import load_settings
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

HTTP_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class Route(BaseModel):
    """One rule of the route table."""

    path: str = Field(
        description="pattern: literal segments, {name} (one segment), globs like match-* (one "
        "segment of that shape), trailing ** (one or more)"
    )
    upstream: str = Field(description="the service: ingest | match")
    methods: list[str] = Field(default_factory=lambda: list(HTTP_METHODS))
    strip_prefix: str = Field(default="", description="removed from the path sent upstream")

    def matches(self, method: str, path: str) -> bool:
        if method.upper() not in self.methods:
            return False
        want = [s for s in self.path.strip("/").split("/") if s]
        have = [s for s in path.strip("/").split("/") if s]
        if want and want[-1] == "**":
            want = want[:-1]
            if len(have) <= len(want):
                return False
            have = have[: len(want)]
        if len(want) != len(have):
            return False
        return all(_segment_matches(w, h) for w, h in zip(want, have, strict=True))


def _segment_matches(pattern: str, segment: str) -> bool:
    if pattern.startswith("{") and pattern.endswith("}"):
        return True
    if "*" in pattern:
        return fnmatch.fnmatchcase(segment, pattern)
    return pattern == segment


DEFAULT_ROUTES: list[Route] = [
    Route(path="/v1/datasets", methods=["GET", "HEAD", "POST", "OPTIONS"], upstream="ingest"),
    Route(
        path="/v1/datasets/{id}", methods=["GET", "HEAD", "DELETE", "OPTIONS"], upstream="ingest"
    ),
    # a dataset's tracks are changed by the ingest service (a new version), read by match
    Route(path="/v1/datasets/{id}/tracks", methods=["POST", "OPTIONS"], upstream="ingest"),
    Route(path="/v1/datasets/{id}/tracks/{track}", methods=["DELETE"], upstream="ingest"),
    Route(path="/v1/datasets/{id}/**", upstream="match"),
    # one job resource for both services: the kind before the id's first '-' routes it
    Route(path="/v1/jobs/match-*", upstream="match"),
    Route(path="/v1/jobs/match-*/**", upstream="match"),
    Route(path="/v1/jobs/**", upstream="ingest"),
    # each service's OpenAPI document, docs and health under its name
    Route(path="/ingest/**", upstream="ingest", strip_prefix="/ingest"),
    Route(path="/match/**", upstream="match", strip_prefix="/match"),
]


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HIDDENSCOPE_GATEWAY_", extra="ignore")

    ingest_url: str = Field(default="http://127.0.0.1:8001", description="ingest API base URL")
    match_url: str = Field(default="http://127.0.0.1:8002", description="match API base URL")
    ui_url: str | None = Field(
        default=None, description="the UI's public URL (shown at GET /; not proxied)"
    )
    routes: list[Route] = Field(
        default_factory=lambda: list(DEFAULT_ROUTES),
        description="the route table (JSON list of {path, upstream, methods, strip_prefix}); "
        "first match wins",
    )
    connect_timeout: float = Field(default=5.0, gt=0, description="seconds to connect upstream")
    read_timeout: float = Field(
        default=300.0, gt=0, description="seconds between bytes of an upstream answer"
    )

    def upstream_url(self, name: str) -> str:
        """Base URL of the service ``name`` (``ingest`` or ``match``); KeyError otherwise."""
        urls = {"ingest": self.ingest_url, "match": self.match_url}
        return urls[name].rstrip("/")

    def route_for(self, method: str, path: str) -> Route | None:
        for route in self.routes:
            if route.matches(method, path):
                return route
        return None


@functools.cache
def get_settings() -> GatewaySettings:
    """The process's settings; a wrong variable stops the gateway at start, named."""
    return load_settings(GatewaySettings)
