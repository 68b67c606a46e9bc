"""The generic API of seed 001 (generate, chat, stream, WebSocket) and seed 004's /llm/query."""

from __future__ import annotations

import contextlib
import uuid
from typing import Annotated, Any

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from .. import keys
from ..errors import GatewayError, utc_now_iso
from ..events import Complete, Error, Text
from ..http import JSONResponse, decode_json, read_json, require_text, validate
from ..locks import held
from ..openapi import doc
from ..providers import GenerationRequest
from ..sse import task_stream
from ..state import Gateway, gateway
from .claude import TaskId

Prompt = Annotated[str, Meta(min_length=1, max_length=10_000)]
MaxTokens = Annotated[int, Meta(ge=1, le=8000)]
Temperature = Annotated[float, Meta(ge=0, le=1)]
Model = Annotated[str, Meta(min_length=1, max_length=200)]


class GenerateRequest(msgspec.Struct, kw_only=True):
    prompt: Prompt
    max_tokens: MaxTokens = 1024
    temperature: Temperature | None = None
    system: str | None = None
    model: Model | None = None


class WsGenerateRequest(GenerateRequest, kw_only=True):
    stream: bool = False


class ChatRequest(msgspec.Struct, kw_only=True):
    message: Prompt
    conversation_id: TaskId | None = None
    max_tokens: MaxTokens = 1024
    system: str | None = None
    temperature: Temperature | None = None
    model: Model | None = None


class QueryRequest(msgspec.Struct, kw_only=True):
    prompt: Annotated[str, Meta(min_length=1)]
    max_tokens: Annotated[int, Meta(ge=1, le=128_000)] = 1024
    temperature: Temperature | None = None
    system: str | None = None
    model: Model | None = None


class GenerateResponse(msgspec.Struct, omit_defaults=True):
    success: bool
    response: str
    prompt: str
    model: str
    timestamp: str
    tokens_used: int
    task_id: str
    conversation_id: str | None = None


class Conversation(msgspec.Struct):
    messages: list[dict[str, Any]] = msgspec.field(default_factory=list)


def generation(gw: Gateway, body: GenerateRequest | QueryRequest, messages: list[dict[str, Any]]) -> GenerationRequest:
    require_text(body.prompt, "prompt")
    return GenerationRequest(
        model=body.model or gw.settings.claude_model,
        messages=messages,
        max_tokens=body.max_tokens,
        system=body.system or None,
        temperature=body.temperature,
    )


def answered(complete: Complete, prompt: str, task_id: str, conversation_id: str | None = None) -> GenerateResponse:
    tokens = complete.usage.input_tokens + complete.usage.output_tokens
    return GenerateResponse(
        True, complete.text, prompt, complete.model, utc_now_iso(), tokens, task_id, conversation_id
    )


@doc("Generate text (seed 001)", body=[GenerateRequest], response=GenerateResponse, tag="generic")
async def generate(request: Request) -> Response:
    gw = gateway(request)
    body = await read_json(request, GenerateRequest, gw.settings.max_body_bytes)
    info, _ = await gw.runner.submit(None, generation(gw, body, [{"role": "user", "content": body.prompt}]))
    complete = await gw.runner.answer(info.task_id)
    return JSONResponse(answered(complete, body.prompt, info.task_id), headers={"X-Task-Id": info.task_id})


@doc("One turn of a kept conversation (seed 001)", body=[ChatRequest], response=GenerateResponse, tag="generic")
async def chat(request: Request) -> Response:
    """One turn of a conversation kept in the store; turns of one conversation run one after the other."""
    gw = gateway(request)
    body = await read_json(request, ChatRequest, gw.settings.max_body_bytes)
    conversation_id = body.conversation_id or str(uuid.uuid4())
    key, lock = keys.conversation(conversation_id), keys.conversation_lock(conversation_id)
    async with held(gw.store, lock, ttl=max(3.0, gw.settings.task_lease_seconds * 3)):
        stored = await gw.store.get_value(key)
        history = msgspec.json.decode(stored, type=Conversation) if stored else Conversation()
        user_turn = {"role": "user", "content": body.message}
        generate_request = generation(
            gw,
            GenerateRequest(
                prompt=body.message,
                max_tokens=body.max_tokens,
                system=body.system,
                temperature=body.temperature,
                model=body.model,
            ),
            [*history.messages, user_turn],
        )
        info, _ = await gw.runner.submit(None, generate_request)
        complete = await gw.runner.answer(info.task_id)
        history.messages += [user_turn, {"role": "assistant", "content": complete.text}]
        await gw.store.set_value(key, msgspec.json.encode(history), ttl=gw.settings.conversation_ttl_seconds)
    return JSONResponse(
        answered(complete, body.message, info.task_id, conversation_id), headers={"X-Task-Id": info.task_id}
    )


async def _text_stream(request: Request, body: GenerateRequest | QueryRequest) -> Response:
    gw = gateway(request)
    info, _ = await gw.runner.submit(None, generation(gw, body, [{"role": "user", "content": body.prompt}]))
    return task_stream(request, gw.store, info.task_id, "text", after=None)


@doc("Stream generated text (seed 001)", body=[GenerateRequest], stream="text", query=["format"], tag="generic")
async def stream(request: Request) -> Response:
    body = await read_json(request, GenerateRequest, gateway(request).settings.max_body_bytes)
    return await _text_stream(request, body)


@doc("Stream an answer as text (seed 004)", body=[QueryRequest], stream="text", query=["format"], tag="generic")
async def llm_query(request: Request) -> Response:
    body = await read_json(request, QueryRequest, gateway(request).settings.max_body_bytes)
    return await _text_stream(request, body)


async def generate_ws(websocket: WebSocket) -> None:
    """Each message a GenerateRequest (+ ``stream``); one reply, or chunks then the reply; errors keep it open."""
    gw = gateway(websocket)
    await websocket.accept()
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            raw = message.get("text") or (message.get("bytes") or b"").decode("utf-8", "replace")
            try:
                await _answer_ws(gw, websocket, raw)
            except GatewayError as exc:
                error: dict[str, Any] = {"event": "error", "success": False, "error": exc.message, "type": exc.type}
                if exc.detail is not None:
                    error["detail"] = exc.detail
                await websocket.send_text(msgspec.json.encode(error).decode())


async def _answer_ws(gw: Gateway, websocket: WebSocket, raw: str) -> None:
    body = validate(decode_json(raw, "message"), WsGenerateRequest)
    info, _ = await gw.runner.submit(None, generation(gw, body, [{"role": "user", "content": body.prompt}]))
    terminal = None
    async for batch in gw.store.follow(info.task_id):
        for _, event in batch:
            if isinstance(event, Text) and body.stream and event.text:
                await websocket.send_text(msgspec.json.encode({"event": "chunk", "chunk": event.text}).decode())
            elif isinstance(event, Complete | Error):
                terminal = event
    if isinstance(terminal, Error):
        raise GatewayError(terminal.type, terminal.message)
    if terminal is None:
        raise GatewayError("internal", "the task ended without an answer")
    reply = answered(terminal, body.prompt, info.task_id)
    message = {
        "event": "complete",
        "success": True,
        "response": reply.response,
        "model": reply.model,
        "tokens_used": reply.tokens_used,
        "task_id": info.task_id,
    }
    await websocket.send_text(msgspec.json.encode(message).decode())


routes = [
    Route("/api/generate", generate, methods=["POST"]),
    Route("/api/chat", chat, methods=["POST"]),
    Route("/api/stream", stream, methods=["POST"]),
    Route("/llm/query", llm_query, methods=["POST"]),
    WebSocketRoute("/ws/generate", generate_ws),
]
