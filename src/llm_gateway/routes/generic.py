"""The generic API of seed 001 (generate, chat, stream, WebSocket) and seed 004's /llm/query."""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from ..bodies import ChatRequest, GenerateRequest, QueryRequest, WsGenerateRequest, from_text
from ..errors import GatewayError, utc_now_iso
from ..events import Complete
from ..http import JSONResponse, LeanRoute, decode_json, read_body, read_json, validate
from ..openapi import doc
from ..sse import task_stream
from ..state import Gateway, gateway
from ..tenants import public, tenant_of
from ..ui_messages import AiChatRequest, is_ai_sdk_chat
from . import ai_sdk


class GenerateResponse(msgspec.Struct, omit_defaults=True):
    success: bool
    response: str
    prompt: str
    model: str
    timestamp: str
    tokens_used: int
    task_id: str
    conversation_id: str | None = None


def answered(complete: Complete, prompt: str, task_id: str, conversation_id: str | None = None) -> GenerateResponse:
    tokens = complete.usage.input_tokens + complete.usage.output_tokens
    return GenerateResponse(
        True, complete.text, prompt, complete.model, utc_now_iso(), tokens, task_id, conversation_id
    )


@doc("Generate text (seed 001)", body=[GenerateRequest], response=GenerateResponse, tag="generic")
async def generate(request: Request) -> Response:
    gw = gateway(request)
    body = await read_json(request, GenerateRequest, gw.settings.max_body_bytes)
    info, _ = await gw.runner.submit(None, from_text(body, gw.settings.claude_model), tenant=tenant_of(request))
    complete = await gw.runner.answer(info.task_id)
    task_id = public(info.task_id)
    return JSONResponse(answered(complete, body.prompt, task_id), headers={"X-Task-Id": task_id})


@doc(
    "One turn of a kept conversation (seed 001); an AI SDK body (id, messages or message) streams `ui` instead",
    body=[ChatRequest, AiChatRequest],
    response=GenerateResponse,
    tag="generic",
)
async def chat(request: Request) -> Response:
    """One turn of a conversation kept in the store; turns of one conversation run one after the other."""
    gw = gateway(request)
    data = decode_json(await read_body(request, gw.settings.max_body_bytes))
    if is_ai_sdk_chat(data):
        return await ai_sdk.send(request, data)
    body = validate(data, ChatRequest)
    conversation_id = body.conversation_id or str(uuid.uuid4())
    task_id, complete = await gw.conversations.turn(tenant_of(request), conversation_id, body)
    return JSONResponse(answered(complete, body.message, task_id, conversation_id), headers={"X-Task-Id": task_id})


async def _text_stream(request: Request, body: GenerateRequest | QueryRequest) -> Response:
    gw = gateway(request)
    info, _ = await gw.runner.submit(None, from_text(body, gw.settings.claude_model), tenant=tenant_of(request))
    return task_stream(request, gw, info.task_id, "text", after=None)


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
                if len(raw) > gw.settings.max_body_bytes // 4 and len(raw.encode()) > gw.settings.max_body_bytes:
                    raise GatewayError("payload_too_large", f"message over {gw.settings.max_body_bytes} bytes")
                await gw.limits.count_request(tenant_of(websocket))
                await _answer_ws(gw, websocket, raw)
            except GatewayError as exc:
                error: dict[str, Any] = {"event": "error", "success": False, "error": exc.message, "type": exc.type}
                if exc.detail is not None:
                    error["detail"] = exc.detail
                if exc.retry_after is not None:
                    error["retry_after"] = exc.retry_after
                await websocket.send_text(msgspec.json.encode(error).decode())


async def _answer_ws(gw: Gateway, websocket: WebSocket, raw: str) -> None:
    body = validate(decode_json(raw, "message"), WsGenerateRequest)
    info, _ = await gw.runner.submit(None, from_text(body, gw.settings.claude_model), tenant=tenant_of(websocket))

    async def send_chunk(text: str) -> None:
        await websocket.send_text(msgspec.json.encode({"event": "chunk", "chunk": text}).decode())

    complete = await gw.runner.answer(info.task_id, send_chunk if body.stream else None)
    reply = answered(complete, body.prompt, public(info.task_id))
    message = {
        "event": "complete",
        "success": True,
        "response": reply.response,
        "model": reply.model,
        "tokens_used": reply.tokens_used,
        "task_id": reply.task_id,
    }
    await websocket.send_text(msgspec.json.encode(message).decode())


routes = [
    LeanRoute("/api/generate", generate, methods=["POST"]),
    LeanRoute("/api/chat", chat, methods=["POST"]),
    LeanRoute("/api/stream", stream, methods=["POST"]),
    LeanRoute("/llm/query", llm_query, methods=["POST"]),
    WebSocketRoute("/ws/generate", generate_ws),
]
