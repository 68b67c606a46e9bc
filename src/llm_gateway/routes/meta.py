"""Service information: GET /, /health, /auth-status."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from .. import __version__
from ..errors import utc_now_iso
from ..http import JSONResponse
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


async def index(request: Request) -> Response:
    endpoints = sorted(
        {f"{method} {getattr(route, 'path', '')}" for route in _routes(request) for method in _methods(route)}
    )
    return JSONResponse({"name": "llm-gateway", "version": __version__, "docs": "/docs", "endpoints": endpoints})


def _routes(request: Request) -> list[BaseRoute]:
    return list(request.app.routes)


def _methods(route: BaseRoute) -> list[str]:
    methods = getattr(route, "methods", None)
    return sorted(methods - {"HEAD"}) if methods else ["WS"]


async def health(request: Request) -> Response:
    gw = gateway(request)
    try:
        await gw.store.ping()
        store_ok = True
    except Exception:
        store_ok = False
    body = {
        "status": "healthy" if store_ok else "unhealthy",
        "store": {"backend": "redis" if gw.settings.redis_url else "embedded", "reachable": store_ok},
        "claude_client": "initialized" if gw.providers.claude is not None else "not configured",
        "auth_type": auth_type(request),
        "model": gw.settings.claude_model,
        "running_tasks": gw.runner.running_count,
        "replica": gw.runner.replica_id,
        "timestamp": utc_now_iso(),
    }
    return JSONResponse(body, status_code=200 if store_ok else 503)


async def auth_status(request: Request) -> Response:
    settings = gateway(request).settings
    body = {
        "authenticated": auth_type(request) is not None,
        "auth_type": auth_type(request),
        "api_key": mask(settings.anthropic_api_key),
        "auth_token": mask(settings.anthropic_auth_token),
        "base_url": settings.anthropic_base_url or "https://api.anthropic.com",
        "model": settings.claude_model,
        "client_keys_required": bool(settings.client_api_keys),
        "timestamp": utc_now_iso(),
    }
    return JSONResponse(body)


routes = [
    Route("/", index, methods=["GET"]),
    Route("/health", health, methods=["GET"]),
    Route("/auth-status", auth_status, methods=["GET"]),
]
