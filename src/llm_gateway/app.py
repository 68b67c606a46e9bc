"""The Starlette app: ``create_app(settings)`` wires routes, middleware and one lifespan that opens everything."""

from __future__ import annotations

import contextlib
import hmac
import logging
from collections.abc import AsyncIterator
from urllib.parse import parse_qs

from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from .answers import AnswerCache
from .config import Settings, from_env
from .conversations import Conversations
from .errors import ErrorType, GatewayError
from .http import error_response
from .providers.registry import Providers
from .redact import mask_query
from .routes import chat, claude, generic, meta, trellis as trellis_routes
from .state import Gateway
from .store import Store, open_store
from .tasks import TaskRunner
from .trellis import PiAPIClient, TrellisTracker

log = logging.getLogger("llm_gateway")

OPEN_PATHS = frozenset({"/", "/health", "/docs", "/redoc", "/openapi.json"})


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


class ClientKeyMiddleware:
    """When GATEWAY_API_KEYS is set, require ``Authorization: Bearer <key>`` or ``X-API-Key`` (constant time)."""

    def __init__(self, app: ASGIApp, keys: list[str]) -> None:
        self.app = app
        self.keys = [key.encode() for key in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.keys or scope["type"] not in ("http", "websocket") or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        if scope["type"] == "http" and scope["method"] == "OPTIONS":
            return await self.app(scope, receive, send)  # CORS preflight carries no credentials
        if self._authorized(scope):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 4401, "reason": "unauthorized"})
        error = GatewayError("unauthorized", "missing or invalid API key: send Authorization: Bearer <key>")
        await error_response(error)(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        headers = dict(scope["headers"])
        offered = headers.get(b"x-api-key", b"")
        authorization = headers.get(b"authorization", b"")
        if authorization[:7].lower() == b"bearer ":
            offered = authorization[7:].strip()
        if not offered and scope["type"] == "websocket":
            # Browsers cannot set headers on a WebSocket: accept ?api_key= there.
            offered = parse_qs(scope.get("query_string", b"").decode()).get("api_key", [""])[0].encode()
        # Compare with every key, so timing tells nothing about which one was close.
        matched = False
        for key in self.keys:
            matched |= hmac.compare_digest(offered, key)
        return matched


async def gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return error_response(exc)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kinds: dict[int, ErrorType] = {404: "not_found"}
    message = {404: f"no route for {request.url.path}", 405: f"{request.method} not allowed here"}
    error = GatewayError(kinds.get(exc.status_code, "invalid_request"), message.get(exc.status_code, str(exc.detail)))
    error.status = exc.status_code
    return error_response(error)


async def store_unavailable(request: Request, exc: Exception) -> Response:
    log.warning("store unavailable on %s %s: %s", request.method, request.url.path, type(exc).__name__)
    return error_response(GatewayError("unavailable", "the store is unavailable; try again shortly", retry_after=1))


async def internal_error(request: Request, exc: Exception) -> Response:
    # Starlette re-raises after this answer, and uvicorn logs the traceback: not logged twice here.
    return error_response(GatewayError("internal", "internal server error"))


async def open_gateway(
    settings: Settings, stack: contextlib.AsyncExitStack, *, store: Store | None, providers: Providers | None
) -> Gateway:
    """Open the gateway's resources, each one's close pushed on ``stack`` before it starts: whatever fails,
    the stack closes exactly what was opened, in reverse order. A given store or providers are the caller's."""
    if store is None:
        store = open_store(
            settings.redis_url,
            prefix=settings.redis_key_prefix,
            stream_ttl=settings.stream_ttl_seconds,
            max_bytes=settings.store_max_bytes,
        )
        stack.push_async_callback(store.close)
        await store.connect()
    if providers is None:
        providers = Providers.from_settings(settings)
        stack.push_async_callback(providers.close)
    runner = TaskRunner(
        store,
        providers.resolve,
        max_concurrent=settings.max_concurrent_tasks,
        lease_seconds=settings.task_lease_seconds,
        grace_seconds=settings.shutdown_grace_seconds,
    )
    stack.push_async_callback(runner.shutdown)
    await runner.start()
    piapi = PiAPIClient(settings.trellis_base_url, settings.trellis_api_key, timeout=settings.trellis_timeout)
    stack.push_async_callback(piapi.close)
    trellis = TrellisTracker(
        store,
        piapi,
        interval=settings.trellis_poll_interval,
        max_wait=settings.trellis_max_wait,
        replica_id=runner.replica_id,
    )
    stack.push_async_callback(trellis.stop)
    await trellis.start()
    answers = AnswerCache(store, runner, ttl=settings.cache_ttl_seconds)
    conversations = Conversations(
        store,
        runner,
        ttl=settings.conversation_ttl_seconds,
        default_model=settings.claude_model,
        lock_ttl=max(3.0, settings.task_lease_seconds * 3),
        max_messages=settings.conversation_max_messages,
    )
    return Gateway(settings, store, providers, runner, trellis, answers, conversations)


def create_app(
    settings: Settings | None = None, *, store: Store | None = None, providers: Providers | None = None
) -> Starlette:
    """The app; its lifespan opens (and then closes) the store and providers unless they are given."""
    settings = settings or from_env()
    redact_client_keys_in_logs()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            app.state.gateway = await open_gateway(settings, stack, store=store, providers=providers)
            yield

    middleware = [
        Middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["X-Task-Id", "Retry-After", "Location"],
        ),
        Middleware(ClientKeyMiddleware, keys=settings.client_api_keys),
    ]
    return Starlette(
        routes=[*meta.routes, *claude.routes, *generic.routes, *chat.routes, *trellis_routes.routes],
        middleware=middleware,
        exception_handlers={
            GatewayError: gateway_error,
            HTTPException: http_error,
            RedisError: store_unavailable,
            TimeoutError: store_unavailable,  # every store call is bounded by asyncio.timeout
            Exception: internal_error,
        },
        lifespan=lifespan,
    )
