"""The emulator's Starlette app: every upstream's routes, and the ``/_emulator/*`` controls (no API key needed)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import anthropic, openai
from .piapi import Piapi, PiapiError, piapi_error_response
from .state import Emulator, EmulatorStats
from .stream import json_response


async def _index(request: Request) -> Response:
    return json_response({"name": "llm-gateway emulator"})


async def _stats(stats: EmulatorStats, request: Request) -> Response:
    return json_response(stats.as_dict())


async def _reset(stats: EmulatorStats, request: Request) -> Response:
    stats.reset()
    return json_response(stats.as_dict())


def create_emulator_app(*, deltas: int = 50, delay: float = 0.0, api_key: str | None = None) -> Starlette:
    emulator = Emulator(deltas=deltas, delay=delay, api_key=api_key)
    piapi = Piapi(emulator)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await piapi.aclose()

    app = Starlette(
        routes=[
            Route("/", _index),
            Route("/v1/messages", functools.partial(anthropic.messages, emulator), methods=["POST"]),
            Route("/v1/messages/count_tokens", functools.partial(anthropic.count_tokens, emulator), methods=["POST"]),
            Route("/v1/chat/completions", functools.partial(openai.chat_completions, emulator), methods=["POST"]),
            Route("/api/v1/task", piapi.create, methods=["POST"]),
            Route("/api/v1/task/{task_id}", piapi.get),
            Route("/_emulator/stats", functools.partial(_stats, emulator.stats)),
            Route("/_emulator/reset", functools.partial(_reset, emulator.stats), methods=["POST"]),
            Route("/_emulator/piapi/{task_id}/webhook", piapi.webhook, methods=["POST"]),
        ],
        exception_handlers={
            HTTPException: anthropic.error_response,
            anthropic.APIError: anthropic.error_response,
            openai.ChatError: openai.chat_error_response,
            PiapiError: piapi_error_response,
        },
        lifespan=lifespan,
    )
    app.state.stats = emulator.stats
    app.state.background_tasks = piapi.background
    return app
