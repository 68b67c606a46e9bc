"""Service information: GET /, /health, /auth-status."""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute

from .. import __version__, openapi
from ..errors import utc_now_iso
from ..http import JSONResponse, LeanRoute
from ..metrics import metrics_endpoint
from ..openapi import doc
from ..redact import mask_url
from ..state import gateway


def mask(secret: str | None) -> str | None:
    """Enough of a credential to recognise it, never enough to use it."""
    if not secret:
        return None
    return f"{secret[:7]}…{secret[-4:]}" if len(secret) >= 24 else "****"


def auth_type(request: Request) -> str | None:
    settings = gateway(request).settings
    if settings.anthropic_auth_token:
        return "oauth_token"
    return "api_key" if settings.anthropic_api_key else None


class Index(msgspec.Struct):
    name: str
    version: str
    docs: str
    endpoints: list[str]


class StoreHealth(msgspec.Struct):
    backend: str
    reachable: bool


class Health(msgspec.Struct):
    status: str
    store: StoreHealth
    claude_client: str
    providers: dict[str, bool]
    auth_type: str | None
    model: str
    running_tasks: int
    replica: str
    timestamp: str


class AuthStatus(msgspec.Struct):
    authenticated: bool
    auth_type: str | None
    api_key: str | None
    auth_token: str | None
    base_url: str
    model: str
    client_keys_required: bool
    timestamp: str


@doc("Service name, version and endpoints", response=Index, tag="service")
async def index(request: Request) -> Response:
    routes = list(request.app.routes)
    endpoints = sorted({f"{method} {getattr(route, 'path', '')}" for route in routes for method in _methods(route)})
    return JSONResponse(Index("llm-gateway", __version__, "/docs", endpoints))


def _methods(route: BaseRoute) -> list[str]:
    methods = getattr(route, "methods", None)
    return sorted(methods - {"HEAD"}) if methods else ["WS"]


@doc(
    "Health: the store reachable (503 if not), the upstream configured",
    response=Health,
    others={"503": ("Unhealthy: the store is unreachable", [Health])},
    tag="service",
)
async def health(request: Request) -> Response:
    gw = gateway(request)
    try:
        await gw.store.ping()
        store_ok = True
    except Exception:
        store_ok = False
    body = Health(
        status="healthy" if store_ok else "unhealthy",
        store=StoreHealth("redis" if gw.settings.redis_url else "embedded", store_ok),
        claude_client="initialized" if gw.providers.claude is not None else "not configured",
        providers=gw.providers.configured(),
        auth_type=auth_type(request),
        model=gw.settings.claude_model,
        running_tasks=gw.runner.running_count,
        replica=gw.runner.replica_id,
        timestamp=utc_now_iso(),
    )
    return JSONResponse(body, status_code=200 if store_ok else 503)


@doc("Which Claude credentials are configured (masked)", response=AuthStatus, tag="service")
async def auth_status(request: Request) -> Response:
    settings = gateway(request).settings
    body = AuthStatus(
        authenticated=auth_type(request) is not None,
        auth_type=auth_type(request),
        api_key=mask(settings.anthropic_api_key),
        auth_token=mask(settings.anthropic_auth_token),
        base_url=mask_url(settings.anthropic_base_url or "https://api.anthropic.com"),
        model=settings.claude_model,
        client_keys_required=bool(settings.client_api_keys),
        timestamp=utc_now_iso(),
    )
    return JSONResponse(body)


async def openapi_json(request: Request) -> Response:
    if not hasattr(request.app.state, "openapi"):
        request.app.state.openapi = msgspec.json.encode(openapi.build(request.app.routes))
    return Response(request.app.state.openapi, media_type="application/json")


async def swagger_ui(request: Request) -> Response:
    return HTMLResponse(openapi.SWAGGER_UI)


async def redoc(request: Request) -> Response:
    return HTMLResponse(openapi.REDOC)


routes = [
    LeanRoute("/", index, methods=["GET"]),
    LeanRoute("/health", health, methods=["GET"]),
    LeanRoute("/auth-status", auth_status, methods=["GET"]),
    LeanRoute("/metrics", metrics_endpoint, methods=["GET"], include_in_schema=False),
    LeanRoute("/openapi.json", openapi_json, methods=["GET"], include_in_schema=False),
    LeanRoute("/docs", swagger_ui, methods=["GET"], include_in_schema=False),
    LeanRoute("/redoc", redoc, methods=["GET"], include_in_schema=False),
]
