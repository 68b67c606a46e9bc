"""Client keys: who is asking (their tenant), and keys kept out of the logs.

With GATEWAY_API_KEYS set, a request carries its key as ``Authorization: Bearer <key>``, ``X-API-Key`` or
``x-api-key``; an SSE or WebSocket GET may send ``?api_key=`` instead (browsers' EventSource and WebSocket
cannot set headers). The key's tenant goes into the ASGI scope for the routes (``tenants.tenant_of``), and each
request counts against the tenant's TENANT_RPM. A refusal comes in the caller's wire shape (``errors_wire``), so an
SDK pointed at ``/v1/`` raises its own authentication error.
"""

from __future__ import annotations

import hmac
import logging
from urllib.parse import parse_qs

import msgspec
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import GatewayError
from .errors_wire import wire_error_response
from .redact import mask_query
from .tenants import ANONYMOUS, SCOPE_KEY

OPEN_PATHS = frozenset(
    {"/", "/health", "/docs", "/redoc", "/openapi.json", "/metrics"}
    | {"/playground", "/playground/app.js", "/playground/app.css"}  # the page asks for a key itself
)


class ClientKeyMiddleware:
    """Requires a client key when keys are configured (compared in constant time) and names its tenant."""

    def __init__(self, app: ASGIApp, tenants: dict[str, str]) -> None:
        self.app = app
        self.tenants = [(key.encode(), name) for key, name in tenants.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        scope[SCOPE_KEY] = ANONYMOUS
        if not self.tenants or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        if scope["type"] == "http" and scope["method"] == "OPTIONS":
            return await self.app(scope, receive, send)  # CORS preflight carries no credentials
        tenant = self._tenant(scope)
        if tenant is None:
            if scope["type"] == "websocket":
                return await send({"type": "websocket.close", "code": 4401, "reason": "unauthorized"})
            error = GatewayError("unauthorized", "missing or invalid API key: send Authorization: Bearer <key>")
            return await wire_error_response(scope, error)(scope, receive, send)
        scope[SCOPE_KEY] = tenant
        try:
            await scope["app"].state.gateway.limits.count_request(tenant)
        except GatewayError as exc:
            if scope["type"] == "websocket":
                return await refuse_websocket(exc, receive, send)
            return await wire_error_response(scope, exc)(scope, receive, send)
        await self.app(scope, receive, send)

    def _tenant(self, scope: Scope) -> str | None:
        headers = dict(scope["headers"])
        offered = headers.get(b"x-api-key", b"")
        authorization = headers.get(b"authorization", b"")
        if authorization[:7].lower() == b"bearer ":
            offered = authorization[7:].strip()
        if not offered and (scope["type"] == "websocket" or scope["method"] == "GET"):
            offered = parse_qs(scope.get("query_string", b"").decode()).get("api_key", [""])[0].encode()
        # Compare with every key, so timing tells nothing about which one was close.
        found = None
        for key, name in self.tenants:
            if hmac.compare_digest(offered, key):
                found = name
        return found


async def refuse_websocket(exc: GatewayError, receive: Receive, send: Send) -> None:
    """Accept, say why in the error shape of the socket routes, and close 1013 (try again later)."""
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    error = {"event": "error", "success": False, "error": exc.message, "type": exc.type, "retry_after": exc.retry_after}
    await send({"type": "websocket.send", "text": msgspec.json.encode(error).decode()})
    await send({"type": "websocket.close", "code": 1013, "reason": exc.type})


class RedactKeysFilter(logging.Filter):
    """Keeps client keys sent in a query (``?api_key=``, however percent-encoded) out of uvicorn's log lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_masked(a) if isinstance(a, str) else a for a in record.args)
        return True


def _masked(value: str) -> str:
    path, question, query = value.partition("?")
    return path + question + mask_query(query) if question else value


def redact_client_keys_in_logs() -> None:
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactKeysFilter) for f in logger.filters):
            logger.addFilter(RedactKeysFilter())
