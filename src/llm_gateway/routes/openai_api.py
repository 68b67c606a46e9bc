"""OpenAI's API, drop-in (API.md §4): chat completions as tasks, and the model list in the caller's shape.

A streamed completion answers once its task has produced something (or after ``sse.FIRST_OUTPUT_WAIT``): a
failure before the first token (the upstream's 429, say) is then an HTTP error the SDK raises as its own class,
as OpenAI's API does, rather than an error chunk after a 200. Errors here are in OpenAI's shape
(``errors_wire``) and carry ``X-Task-Id`` when a task was made.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ..bodies_openai import ChatCompletionRequest, from_chat_completion
from ..catalog import OpenAIModel, OpenAIModelList, anthropic_models, openai_models, served_models
from ..dialects_openai import ChatCompletion, OpenAIDialect, chat_completion
from ..errors import GatewayError, NotFound
from ..errors_wire import OpenAIErrorBody, header, openai_error_response
from ..http import JSONResponse, LeanRoute, read_json
from ..openapi import doc
from ..sse import event_stream, frames, open_at_first_output
from ..state import gateway
from ..tenants import public, tenant_of


@doc(
    "OpenAI chat completions, streamed or not: a task (header X-Task-Id; re-read it with ?format=openai)",
    body=[ChatCompletionRequest],
    response=ChatCompletion,
    stream="openai",
    tag="openai",
    error=OpenAIErrorBody,
    invalid_status=400,
)
async def chat_completions(request: Request) -> Response:
    gw = gateway(request)
    body = await read_json(request, ChatCompletionRequest, gw.settings.max_body_bytes)
    generation = from_chat_completion(body, gw.settings.claude_model)
    info, _ = await gw.runner.submit(None, generation, tenant=tenant_of(request))
    task_id = public(info.task_id)
    try:
        if body.stream:
            opening = await open_at_first_output(gw.store, info.task_id)
            dialect = OpenAIDialect(task_id, include_usage=body.include_usage)
            stream = frames(gw.store, info.task_id, None, dialect, opening=opening)
            return event_stream(stream, info.task_id, gw.released)
        complete = await gw.runner.answer(info.task_id)
        log = await gw.store.read(info.task_id)
    except GatewayError as exc:
        return openai_error_response(exc, {"X-Task-Id": task_id})
    return JSONResponse(chat_completion(task_id, complete, log), headers={"X-Task-Id": task_id})


@doc(
    "The models served, as OpenAI lists them (Anthropic's list with an anthropic-version header)",
    response=OpenAIModelList,
    tag="openai",
    error=OpenAIErrorBody,
)
async def list_models(request: Request) -> Response:
    models = served_models(gateway(request).settings)
    if header(request.scope, b"anthropic-version") is not None:
        return JSONResponse(anthropic_models(models))
    return JSONResponse(openai_models(models))


@doc("One listed model, in the caller's shape", response=OpenAIModel, tag="openai", error=OpenAIErrorBody)
async def get_model(request: Request) -> Response:
    model_id = request.path_params["model"]
    models = [(model, owner) for model, owner in served_models(gateway(request).settings) if model == model_id]
    if not models:
        raise NotFound(f"no model {model_id[:200]!r} is listed here")
    if header(request.scope, b"anthropic-version") is not None:
        return JSONResponse(anthropic_models(models).data[0])
    return JSONResponse(openai_models(models).data[0])


routes = [
    LeanRoute("/v1/chat/completions", chat_completions, methods=["POST"]),
    LeanRoute("/v1/models", list_models, methods=["GET"]),
    LeanRoute("/v1/models/{model:path}", get_model, methods=["GET"]),
]
