"""The Starlette app: ``create_app(settings)`` wires routes, middleware and one lifespan that opens everything."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import Receive, Scope, Send

from .ai_chats import AiChats
from .answers import AnswerCache
from .anthropic_errors import AnthropicErrors
from .auth import ClientKeyMiddleware, RedactKeysFilter, redact_client_keys_in_logs
from .config import Settings, from_env
from .conversations import Conversations
from .errors import ErrorType, GatewayError
from .errors_wire import wire_error_response
from .logs import RequestIdMiddleware
from .metrics import STORE_ERRORS, RequestMetrics
from .providers.registry import Providers
from .routes import (
    ai_sdk,
    anthropic_api,
    chat,
    claude,
    generic,
    meta,
    openai_api,
    playground,
    trellis as trellis_routes,
)
from .sse import RAW_SEND
from .state import DRAIN, Gateway
from .store import Store, open_store
from .tasks import TaskRunner
from .tenants import TenantLimits
from .trellis import PiAPIClient, TrellisTracker

__all__ = ["RedactKeysFilter", "create_app", "open_gateway"]

log = logging.getLogger("llm_gateway")


async def gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return wire_error_response(request.scope, exc)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kinds: dict[int, ErrorType] = {404: "not_found"}
    message = {404: f"no route for {request.url.path}", 405: f"{request.method} not allowed here"}
    error = GatewayError(kinds.get(exc.status_code, "invalid_request"), message.get(exc.status_code, str(exc.detail)))
    error.status = exc.status_code
    response = wire_error_response(request.scope, error)
    if exc.status_code == 405:
        # RFC 9110: a 405 lists what the resource allows, from every route of the path (Starlette names one).
        response.headers["Allow"] = ", ".join(allowed_methods(request))
    return response


def allowed_methods(request: Request) -> list[str]:
    allowed: set[str] = set()
    for route in request.app.routes:
        if isinstance(route, Route) and route.methods and route.matches(request.scope)[0] != Match.NONE:
            allowed |= route.methods
    return sorted(allowed)


async def store_unavailable(request: Request, exc: Exception) -> Response:
    STORE_ERRORS.inc()
    log.warning("store unavailable on %s %s: %s", request.method, request.url.path, type(exc).__name__)
    error = GatewayError("unavailable", "the store is unavailable; try again shortly", retry_after=1)
    return wire_error_response(request.scope, error)


async def internal_error(request: Request, exc: Exception) -> Response:
    # Starlette re-raises after this answer, and uvicorn logs the traceback: not logged twice here.
    return wire_error_response(request.scope, GatewayError("internal", "internal server error"))


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
            outage_grace=settings.store_outage_grace,
            max_bytes=settings.store_max_bytes,
            cluster=settings.redis_cluster,
        )
        stack.push_async_callback(store.close)
        await store.connect()
    if providers is None:
        providers = Providers.from_settings(settings)
        stack.push_async_callback(providers.close)
    limits = TenantLimits(
        store,
        max_concurrent=settings.tenant_max_concurrent,
        rpm=settings.tenant_rpm,
        slot_ttl=2 * settings.task_lease_seconds,
    )
    runner = TaskRunner(
        store,
        providers.resolve,
        limits=limits,
        max_concurrent=settings.max_concurrent_tasks,
        lease_seconds=settings.task_lease_seconds,
        grace_seconds=settings.shutdown_grace_seconds,
        store_grace=settings.store_outage_grace,
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
    ai_chats = AiChats(
        store,
        runner,
        limits,
        ttl=settings.conversation_ttl_seconds,
        default_model=settings.claude_model,
        lock_ttl=max(3.0, settings.task_lease_seconds * 3),
        max_messages=settings.conversation_max_messages,
        stop_wait=settings.task_lease_seconds * 2 + 5,
    )
    return Gateway(settings, store, providers, runner, trellis, answers, conversations, limits, ai_chats)


class GatewayApp(Starlette):
    """Starlette that keeps the server's ``send`` in the scope, for event streams' bodies (sse.RAW_SEND)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[RAW_SEND] = send
        await super().__call__(scope, receive, send)


def create_app(
    settings: Settings | None = None, *, store: Store | None = None, providers: Providers | None = None
) -> Starlette:
    """The app; its lifespan opens (and then closes) the store and providers unless they are given."""
    settings = settings or from_env()
    redact_client_keys_in_logs()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Callable[[], Awaitable[None]]]]:
        async with contextlib.AsyncExitStack() as stack:
            app.state.gateway = gw = await open_gateway(settings, stack, store=store, providers=providers)
            yield {DRAIN: gw.drain}  # for server.GatewayServer, through the lifespan state

    middleware = [
        Middleware(RequestMetrics),
        Middleware(RequestIdMiddleware),
        Middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["X-Task-Id", "X-Request-Id", "Retry-After", "Location"],
        ),
        Middleware(AnthropicErrors),
        Middleware(ClientKeyMiddleware, tenants=settings.client_tenants),
    ]
    return GatewayApp(
        routes=[
            *meta.routes,
            *claude.routes,
            *generic.routes,
            *ai_sdk.routes,
            *chat.routes,
            *trellis_routes.routes,
            *openai_api.routes,
            *anthropic_api.routes,
            *playground.routes,
        ],
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
