"""The Vercel AI SDK's ``useChat`` (API.md §4 "Drop-in APIs"): ``POST /api/chat`` with an AI SDK body (routed
here by routes/generic.py, which shares the path with seed 001), the resume stream, the stop, the messages."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from ..http import JSONResponse, LeanRoute
from ..openapi import doc
from ..sse import pick_dialect, resume_point, task_stream
from ..state import gateway
from ..tenants import is_task_id, public, tenant_of
from ..ui_messages import UIMessage, parse_chat_request


async def send(request: Request, data: Any) -> Response:
    """A turn of the chat: its answer in the ``ui`` dialect, live; the chat keeps it."""
    gw = gateway(request)
    body = parse_chat_request(data)
    info = await gw.ai_chats.send(tenant_of(request), body)
    return task_stream(request, gw, info.task_id, "ui", after=None)


def _chat_id(request: Request) -> str | None:
    """The path's chat id; one no client could have made names a chat that never existed."""
    chat_id: str = request.path_params["chat_id"]
    return chat_id if is_task_id(chat_id) else None


@doc(
    "Resume the chat's answer (useChat resume): a replay from its start, then live; 204 if none runs",
    stream="ui",
    query=["format"],
    tag="ai-sdk",
    others={"204": ("No answer of the chat is running: nothing to resume", [])},
)
async def resume(request: Request) -> Response:
    gw = gateway(request)
    pick_dialect(request, "ui", "")  # a bad ?format= is a 400 whether or not an answer runs
    chat_id = _chat_id(request)
    task_id = None if chat_id is None else await gw.ai_chats.running(tenant_of(request), chat_id)
    if task_id is None:
        return Response(status_code=204)
    return task_stream(request, gw, task_id, "ui", after=resume_point(request))


class Stopped(msgspec.Struct):
    chat_id: str
    task_id: str
    status: str


@doc(
    "Stop the chat's answer wherever it runs; its partial answer stays in the chat (204 if none runs)",
    response=Stopped,
    tag="ai-sdk",
    others={"204": ("No answer of the chat is running: nothing to stop", [])},
)
async def stop(request: Request) -> Response:
    gw = gateway(request)
    chat_id = _chat_id(request)
    info = None if chat_id is None else await gw.ai_chats.stop(tenant_of(request), chat_id)
    if chat_id is None or info is None:
        return Response(status_code=204)
    return JSONResponse(Stopped(chat_id, public(info.task_id), info.status))


@doc("The chat's messages as UIMessages ([] for a chat with none yet)", response=list[UIMessage], tag="ai-sdk")
async def messages(request: Request) -> Response:
    gw = gateway(request)
    chat_id = _chat_id(request)
    kept = [] if chat_id is None else await gw.ai_chats.messages(tenant_of(request), chat_id)
    return JSONResponse(kept)


routes = [
    LeanRoute("/api/chat/{chat_id}/stream", resume, methods=["GET"]),
    LeanRoute("/api/chat/{chat_id}/stream", stop, methods=["DELETE"]),
    LeanRoute("/api/chat/{chat_id}/messages", messages, methods=["GET"]),
]
