"""The Anthropic Messages API, drop-in (API.md §4): ``POST /v1/messages``, streamed or not, and
``POST /v1/messages/count_tokens``.

Every answer is a task (``X-Task-Id``) that ``GET /api/claude/subscribe/{task_id}?format=anthropic`` re-reads
from any replica. Every error answer is in Anthropic's shape: these routes answer in ours, like every route,
and ``anthropic_errors.AnthropicErrors`` rewrites them, so the key middleware's and the app's answers are too.
"""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from ..anthropic_errors import AnthropicErrorBody
from ..bodies_anthropic import MessageCountTokensParams, MessageCreateParams, from_anthropic
from ..dialects_anthropic import AnthropicDialect, AnthropicMessage, message_of
from ..errors import GatewayError, InvalidRequest
from ..http import JSONResponse, LeanRoute, error_response, read_json
from ..openapi import doc
from ..providers import TokenCounter
from ..sse import event_stream, frames, open_at_first_output
from ..state import Gateway, gateway
from ..tenants import public, tenant_of


class TokenCount(msgspec.Struct):
    input_tokens: int


@doc(
    "Anthropic's Messages API (stream or not); the answer is a task",
    body=[MessageCreateParams],
    response=AnthropicMessage,
    stream="anthropic",
    tag="anthropic",
    error=AnthropicErrorBody,
    invalid_status=400,
)
async def messages(request: Request) -> Response:
    gw = gateway(request)
    body = await read_json(request, MessageCreateParams, gw.settings.max_body_bytes)
    info, _ = await gw.runner.submit(None, from_anthropic(body), tenant=tenant_of(request))
    task_id = public(info.task_id)
    try:
        if body.stream:
            return await _stream(gw, info.task_id)
        await gw.runner.answer(info.task_id)
    except GatewayError as exc:
        response = error_response(exc)
        response.headers["X-Task-Id"] = task_id  # the failed task can still be looked at
        return response
    message = message_of(task_id, [event for _, event in await gw.store.read(info.task_id)])
    return JSONResponse(message, headers={"X-Task-Id": task_id})


async def _stream(gw: Gateway, task_id: str) -> Response:
    """The task in the ``anthropic`` dialect, from its first output on; a failure before that is raised."""
    opening = await open_at_first_output(gw.store, task_id)
    dialect = AnthropicDialect(public(task_id))
    return event_stream(frames(gw.store, task_id, None, dialect, opening=opening), task_id, gw.released)


@doc(
    "Count a message's input tokens (asked of the upstream)",
    body=[MessageCountTokensParams],
    response=TokenCount,
    tag="anthropic",
    error=AnthropicErrorBody,
    invalid_status=400,
)
async def count_tokens(request: Request) -> Response:
    gw = gateway(request)
    body = await read_json(request, MessageCountTokensParams, gw.settings.max_body_bytes)
    provider, upstream_model = gw.providers.resolve(body.model)
    if not isinstance(provider, TokenCounter):
        raise InvalidRequest(f"model {body.model!r} cannot count tokens: count_tokens is for Claude models")
    counted = await provider.count_tokens(msgspec.structs.replace(from_anthropic(body), model=upstream_model))
    return JSONResponse(TokenCount(counted))


routes = [
    LeanRoute("/v1/messages", messages, methods=["POST"]),
    LeanRoute("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
]
