"""POST /chat, chosen by the body (API.md §4): ``question`` (seed 002, cached), an AG-UI ``RunAgentInput``
(today's @tanstack/ai-client, resumable by run id), or bare ``messages`` (seed 003's legacy TanStack chunks)."""

from __future__ import annotations

import asyncio
import hashlib
import re
from typing import Annotated, Any

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import keys
from ..errors import GatewayError, InvalidRequest, NotFound
from ..events import TaskInfo
from ..http import decode_json, read_body, require_text, validate
from ..openapi import doc
from ..providers import GenerationRequest
from ..sse import checked_event_id, resume_point, task_stream
from ..state import Gateway, gateway
from ..tanstack import ClientMessage, to_anthropic, to_anthropic_tools
from ..tasks import new_task_id
from .claude import TaskId

Model = Annotated[str, Meta(min_length=1, max_length=200)]
MaxTokens = Annotated[int, Meta(ge=1, le=128_000)]


class QuestionRequest(msgspec.Struct, kw_only=True):
    question: Annotated[str, Meta(min_length=1, max_length=100_000)]
    use_cache: bool = True
    model: Model | None = None
    max_tokens: MaxTokens = 1024
    temperature: Annotated[float, Meta(ge=0, le=1)] | None = None
    system: str | None = None


class MessagesRequest(msgspec.Struct, kw_only=True):
    messages: Annotated[list[ClientMessage], Meta(min_length=1)]
    tools: list[dict[str, Any]] | None = None
    model: Model | None = None
    data: dict[str, Any] | None = None


class RunAgentInput(msgspec.Struct, kw_only=True):
    threadId: str = ""
    runId: TaskId | None = None
    messages: Annotated[list[ClientMessage], Meta(min_length=1)]
    tools: list[dict[str, Any]] | None = None
    forwardedProps: dict[str, Any] | None = None
    data: dict[str, Any] | None = None


def _options(*sources: dict[str, Any] | None) -> dict[str, Any]:
    """forwardedProps over the deprecated ``data`` mirror (wire-formats §3.3)."""
    merged: dict[str, Any] = {}
    for source in reversed(sources):
        merged.update(source or {})
    return merged


def _generation(
    gw: Gateway, messages: list[ClientMessage], tools: list[dict[str, Any]] | None, options: dict[str, Any]
) -> GenerationRequest:
    anthropic_messages, system = to_anthropic(messages)
    model = options.get("model") or gw.settings.claude_model
    max_tokens = options.get("max_tokens") or options.get("maxTokens") or 4096
    temperature = options.get("temperature")
    checked = validate(
        {"model": model, "max_tokens": max_tokens, "temperature": temperature},
        _Options,
    )
    return GenerationRequest(
        model=checked.model,
        messages=anthropic_messages,
        max_tokens=checked.max_tokens,
        system=system,
        temperature=checked.temperature,
        tools=to_anthropic_tools(tools),
    )


class _Options(msgspec.Struct):
    model: Model
    max_tokens: MaxTokens
    temperature: Annotated[float, Meta(ge=0, le=1)] | None = None


def cache_key(request: GenerationRequest) -> str:
    """SHA-256 of the normalised request: whitespace-insensitive question, model and parameters."""
    normalised = msgspec.structs.replace(
        request,
        messages=[{**m, "content": re.sub(r"\s+", " ", m["content"]).strip()} for m in request.messages],
    )
    return hashlib.sha256(msgspec.json.encode(normalised, order="sorted")).hexdigest()


async def _cached_task(gw: Gateway, request: GenerationRequest, use_cache: bool) -> TaskInfo:
    """The task answering ``request``: a cached or in-flight one (single-flight), else a new one."""
    key = keys.answer(cache_key(request))
    ttl = gw.settings.cache_ttl_seconds
    if not use_cache:
        info, _ = await gw.runner.submit(None, request)
        await gw.store.set_value(key, info.task_id.encode(), ttl=ttl)
        return info
    for attempt in range(40):
        cached = await gw.store.get_value(key)
        if cached is not None:
            cached_info = await gw.store.get_task(cached.decode())
            if cached_info is None and attempt < 20:
                await asyncio.sleep(0.05)  # claimed a moment ago; its task is being created
                continue
            if cached_info is not None and cached_info.status in ("queued", "running", "completed"):
                return cached_info
            await gw.store.delete_value(key, if_equals=cached)  # failed or expired: not an answer to share
        # Claim the key before generating, so identical requests arriving meanwhile share this generation.
        task_id = new_task_id()
        if await gw.store.set_value_if_absent(key, task_id.encode(), ttl=ttl):
            try:
                info, _ = await gw.runner.submit(task_id, request)
            except BaseException:
                await gw.store.delete_value(key, if_equals=task_id.encode())
                raise
            return info
    raise GatewayError("unavailable", "the answer cache is busy; try again", retry_after=1)


@doc(
    "Chat stream: question (status, cached), AG-UI run (agui), or messages (tanstack)",
    body=[QuestionRequest, RunAgentInput, MessagesRequest],
    stream="status | agui | tanstack, by the body",
    query=["format"],
    tag="chat",
)
async def chat(request: Request) -> Response:
    gw = gateway(request)
    data = decode_json(await read_body(request, gw.settings.max_body_bytes))
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object", status=422)
    if "question" in data:
        return await _question(request, gw, validate(data, QuestionRequest))
    if "runId" in data or "threadId" in data or "forwardedProps" in data or request.headers.get("x-run-id"):
        if "runId" not in data and request.headers.get("x-run-id"):
            data["runId"] = request.headers["x-run-id"]
        return await _agent_run(request, gw, validate(data, RunAgentInput))
    if "messages" in data:
        return await _legacy(request, gw, validate(data, MessagesRequest))
    raise InvalidRequest(
        "send a question, an AG-UI run (threadId, runId, messages) or messages",
        detail=[{"loc": ["body", "question"], "msg": "field required", "type": "missing"}],
        status=422,
    )


async def _question(request: Request, gw: Gateway, body: QuestionRequest) -> Response:
    require_text(body.question, "question")
    generation = GenerationRequest(
        model=body.model or gw.settings.claude_model,
        messages=[{"role": "user", "content": body.question}],
        max_tokens=body.max_tokens,
        system=body.system or None,
        temperature=body.temperature,
    )
    info = await _cached_task(gw, generation, body.use_cache)
    return task_stream(request, gw.store, info.task_id, "status", after=resume_point(request))


async def _agent_run(request: Request, gw: Gateway, body: RunAgentInput) -> Response:
    options = _options(body.forwardedProps, body.data)
    generation = _generation(gw, body.messages, body.tools, options)
    # The run id is the task id: the client's re-POST of the same run (with Last-Event-ID) attaches to it.
    info, _ = await gw.runner.submit(body.runId, generation, thread_id=body.threadId)
    return task_stream(request, gw.store, info.task_id, "agui", after=resume_point(request), thread_id=body.threadId)


async def _legacy(request: Request, gw: Gateway, body: MessagesRequest) -> Response:
    generation = _generation(gw, body.messages, body.tools, _options(body.data, {"model": body.model}))
    info, _ = await gw.runner.submit(None, generation)
    return task_stream(request, gw.store, info.task_id, "tanstack", after=resume_point(request))


@doc("Join an AG-UI run (joinRun)", stream="agui", query=["runId", "offset", "threadId", "format"], tag="chat")
async def join_run(request: Request) -> Response:
    """GET /chat?runId=…&offset=-1: joinRun() of @tanstack/ai-client, from the start (or after ``offset``)."""
    gw = gateway(request)
    run_id = request.query_params.get("runId") or request.headers.get("x-run-id")
    if not run_id:
        raise InvalidRequest("runId is required", detail=[{"loc": ["query", "runId"], "msg": "field required"}])
    info = await gw.store.get_task(run_id)
    if info is None:
        raise NotFound(f"no run {run_id}")
    offset = request.query_params.get("offset")
    after = resume_point(request) or (offset if offset not in (None, "", "-1") else None)
    if after is not None:
        checked_event_id(after)  # a bad offset is a 400 now, not a broken stream later
    thread_id = request.query_params.get("threadId", "")
    return task_stream(request, gw.store, info.task_id, "agui", after=after, thread_id=thread_id)


routes = [Route("/chat", chat, methods=["POST"]), Route("/chat", join_run, methods=["GET"])]
