"""Pure renderers: our event log -> the wire dialects of API.md §3.

Each SSE renderer maps one (event id, event) to the bytes of its frames; the last frame of an event
carries the id, so a client resuming with ``Last-Event-ID`` gets exactly the events after it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from .events import Complete, Error, Event, Start, Text, TokenUsage, ToolCall, Usage

_encode = msgspec.json.Encoder().encode

Renderer = Callable[[str, Event], bytes]


class NativeStart(msgspec.Struct):
    task_id: str
    model: str


class NativeChunk(msgspec.Struct):
    chunk: str


class NativeToolCall(msgspec.Struct):
    index: int
    id: str
    name: str
    args_delta: str


class NativeComplete(msgspec.Struct):
    response: str
    stop_reason: str | None
    usage: TokenUsage
    model: str


class NativeError(msgspec.Struct):
    type: str
    message: str


def native_payload(event: Event) -> tuple[str, Any]:
    """The ``native`` dialect's event name and data for one event (also the WebSocket message body)."""
    match event:
        case Text(text=text):
            return "chunk", NativeChunk(text)
        case ToolCall():
            return "tool_call", NativeToolCall(event.index, event.id, event.name, event.args_delta)
        case Start(task_id=task_id, model=model):
            return "start", NativeStart(task_id, model)
        case Usage(input_tokens=input_tokens, output_tokens=output_tokens):
            return "usage", TokenUsage(input_tokens, output_tokens)
        case Complete(text=text, stop_reason=stop_reason, usage=usage, model=model):
            return "complete", NativeComplete(text, stop_reason, usage, model)
        case Error(type=type_, message=message):
            return "error", NativeError(type_, message)
    raise TypeError(f"unknown event {event!r}")


def render_native(event_id: str, event: Event) -> bytes:
    name, data = native_payload(event)
    return b"event: %s\nid: %s\ndata: %s\n\n" % (name.encode(), event_id.encode(), _encode(data))


class WsMessage(msgspec.Struct):
    id: str
    event: str
    data: Any


def render_ws(event_id: str, event: Event) -> bytes:
    name, data = native_payload(event)
    return _encode(WsMessage(event_id, name, data))


SSE_RENDERERS: dict[str, Renderer] = {"native": render_native}
