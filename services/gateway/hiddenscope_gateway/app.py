"""The gateway: one base URL for both APIs.

``uvicorn --factory hiddenscope_gateway.app:create_app``.

A streaming reverse proxy by path (route table in :mod:`hiddenscope_gateway.settings`): request
and response bodies pass through chunk by chunk (uploads of many GB are never held in memory),
status, headers and ``Location`` are passed unchanged (every value of a repeated header; minus
the hop-by-hop ones, and ``Date`` and ``Server``, which the gateway's own server sets), and
``X-Forwarded-*`` headers are added. A path no rule owns is a 404 problem; an upstream that
cannot be reached is a 502 problem (504 on timeout).

``GET /`` lists the services; ``GET /healthz`` checks both upstreams' ``/healthz`` (503 if one
is down).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route as StarletteRoute

from hiddenscope_gateway.settings import HTTP_METHODS, GatewaySettings, Route, get_settings

# RFC 9110 §7.6.1 connection-specific fields, plus the ones the client library sets itself
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
# set again by the gateway's own server: passing the upstream's would send them twice
OWN_RESPONSE_HEADERS = frozenset({"date", "server"})


def _problem(status: int, title: str, detail: str) -> JSONResponse:
    return JSONResponse(
        {"type": "about:blank", "title": title, "status": status, "detail": detail},
        status_code=status,
        media_type="application/problem+json",
    )


def _forward_headers(request: Request) -> list[tuple[str, str]]:
    headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
    client = request.client.host if request.client else ""
    prior = request.headers.get("x-forwarded-for")
    headers.append(("x-forwarded-for", f"{prior}, {client}" if prior else client))
    headers.append(("x-forwarded-proto", request.url.scheme))
    headers.append(("x-forwarded-host", request.headers.get("host", "")))
    return headers


def _response_headers(answer: httpx.Response) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers to pass on, as ASGI raw headers: every value of a
    repeated field (``set-cookie``, ``vary``) kept, hop-by-hop fields and the ones the gateway's
    own server sets (``date``, ``server``) dropped."""
    out = []
    for name, value in answer.headers.raw:
        key = name.lower()
        text = key.decode("latin-1")
        if text not in HOP_BY_HOP and text not in OWN_RESPONSE_HEADERS:
            out.append((key, value))
    return out


class Gateway:
    """The proxy's state: settings and one pooled ``httpx.AsyncClient`` (opened at startup)."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.client: httpx.AsyncClient | None = None

    def open(self) -> None:
        s = self.settings
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(s.read_timeout, connect=s.connect_timeout, write=None),
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
            follow_redirects=False,
        )

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    def _target(self, route: Route, request: Request) -> str:
        path = request.url.path
        if route.strip_prefix and path.startswith(route.strip_prefix):
            path = path[len(route.strip_prefix) :] or "/"
        query = request.url.query
        return self.settings.upstream_url(route.upstream) + path + (f"?{query}" if query else "")

    async def proxy(self, request: Request) -> Response:
        route = self.settings.route_for(request.method, request.url.path)
        if route is None:
            return _problem(
                404,
                "Not found",
                f"no service serves {request.method} {request.url.path} (see GET / for the APIs)",
            )
        return await self._send(route, request)

    async def _send(self, route: Route, request: Request) -> Response:
        assert self.client is not None
        upstream = route.upstream
        upstream_request = self.client.build_request(
            request.method,
            self._target(route, request),
            headers=_forward_headers(request),
            content=request.stream(),
        )
        try:
            answer = await self.client.send(upstream_request, stream=True)
        except httpx.TimeoutException:
            return _problem(
                504, "Gateway timeout", f"the {upstream} service did not answer in time"
            )
        except httpx.TransportError as e:
            return _problem(
                502, "Bad gateway", f"the {upstream} service is unreachable ({type(e).__name__})"
            )
        response = StreamingResponse(
            answer.aiter_raw(),
            status_code=answer.status_code,
            background=BackgroundTask(answer.aclose),
        )
        response.raw_headers = _response_headers(answer)
        return response

    async def health(self) -> dict[str, bool]:
        client = self.client
        assert client is not None

        async def one(name: str) -> tuple[str, bool]:
            try:
                r = await client.get(self.settings.upstream_url(name) + "/healthz", timeout=5.0)
                return name, r.status_code == 200
            except httpx.HTTPError:
                return name, False

        return dict(await asyncio.gather(one("ingest"), one("match")))


def create_app(settings: GatewaySettings | None = None) -> Starlette:
    gateway = Gateway(settings or get_settings())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        gateway.open()
        try:
            yield
        finally:
            await gateway.close()

    async def index(request: Request) -> JSONResponse:
        s = gateway.settings
        body: dict[str, Any] = {
            "service": "hiddenscope-gateway",
            "apis": {
                "ingest": {"openapi": "/ingest/openapi.json", "docs": "/ingest/docs"},
                "match": {"openapi": "/match/openapi.json", "docs": "/match/docs"},
            },
            "routes": [r.model_dump() for r in s.routes],
        }
        if s.ui_url:
            body["ui"] = s.ui_url
        return JSONResponse(body)

    async def healthz(request: Request) -> JSONResponse:
        upstreams = await gateway.health()
        ok = all(upstreams.values())
        return JSONResponse(
            {"status": "ok" if ok else "degraded", "upstreams": upstreams},
            status_code=200 if ok else 503,
        )

    async def livez(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    app = Starlette(
        routes=[
            StarletteRoute("/", index, methods=["GET"]),
            StarletteRoute("/healthz", healthz, methods=["GET"]),
            StarletteRoute("/livez", livez, methods=["GET"]),
            StarletteRoute("/{path:path}", gateway.proxy, methods=HTTP_METHODS),
        ],
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    return app
