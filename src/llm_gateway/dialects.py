"""Pure renderers: our event log -> the wire dialects of API.md §3.

Each SSE renderer maps one (event id, event) to the bytes of its frames; the last frame of an event
carries the id, so a client resuming with ``Last-Event-ID`` gets exactly the events after it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from .dialects_anthropic import AnthropicDialect
from .dialects_openai import OpenAIDialect, finish_reason
from .events import Complete, Error, Event, Progress, Start, Text, TokenUsage, ToolCall, Usage
from .trellis.status import StatusRenderer, trellis_message

_encode = msgspec.json.Encoder().encode


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


class NativeError(msgspec.Struct, omit_defaults=True):
    type: str
    message: str
    retryable: bool
    retry_after: float | None = None


def error_fields(event: Error) -> dict[str, Any]:
    """``retryable`` always, ``retry_after`` where the upstream gave one (API.md §1)."""
    fields: dict[str, Any] = {"retryable": event.retryable}
    if event.retry_after is not None:
        fields["retry_after"] = event.retry_after
    return fields


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
            return "error", NativeError(type_, message, event.retryable, event.retry_after)
        case Progress():
            return "progress", trellis_message(event)
    raise TypeError(f"unknown event {event!r}")


class TrellisDialect:
    """Seed 000's Trellis updates: ``{status, message, data, full_response}`` per change; an end without a final
    status (given up, interrupted) becomes ``status: error``."""

    stateful = True

    def __init__(self) -> None:
        self.statuses = StatusRenderer()

    def render(self, event_id: str, event: Event) -> bytes:
        message = self.statuses.render(event)
        return b"" if message is None else sse_frame(_encode(message), event_id)


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


def sse_frame(data: bytes, event_id: str | None = None, name: str | None = None) -> bytes:
    """One SSE frame; a multi-line ``data`` becomes several ``data:`` lines, joined back by the client."""
    head = b"event: %s\n" % name.encode() if name else b""
    if event_id:
        head += b"id: %s\n" % event_id.encode()
    if b"\n" in data or b"\r" in data:
        lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        return head + b"".join(b"data: %s\n" % line for line in lines) + b"\n"
    return head + b"data: %s\n\n" % data


DONE = b"data: [DONE]\n\n"


class Dialect(Protocol):
    """Renders one stream. A stateful one (accumulated text, open messages) is primed on resume by
    rendering, and discarding, every event up to the resume point. One may name response headers of its own
    (``headers``, a dict), sent with its stream."""

    stateful: bool

    def render(self, event_id: str, event: Event) -> bytes: ...


class NativeDialect:
    stateful = False

    def render(self, event_id: str, event: Event) -> bytes:
        return render_native(event_id, event)


class TextDialect:
    """Seeds 001 (/api/stream) and 004: the text itself, then [DONE]."""

    stateful = False

    def render(self, event_id: str, event: Event) -> bytes:
        match event:
            case Text(text=text) if text:
                return sse_frame(text.encode(), event_id)
            case Complete():
                return DONE
            case Error(type=type_, message=message):
                body = {"type": type_, "message": message, **error_fields(event)}
                return sse_frame(_encode(body), event_id, "error") + DONE
        return b""


class StatusDialect:
    """Seed 002: processing, streaming chunks, then completed with the whole text, or error."""

    stateful = False

    def render(self, event_id: str, event: Event) -> bytes:
        match event:
            case Start():
                return sse_frame(b'{"status":"processing"}', event_id)
            case Text(text=text) if text:
                return sse_frame(_encode({"status": "streaming", "chunk": text}), event_id)
            case Complete(text=text):
                return sse_frame(_encode({"status": "completed", "chunk": text}), event_id)
            case Error(type=type_, message=message):
                body = {"status": "error", "message": message, "type": type_, **error_fields(event)}
                return sse_frame(_encode(body), event_id)
        return b""


class TanStackDialect:
    """Seed 003: TanStack AI's legacy StreamChunks (wire-formats §3.1), then [DONE]."""

    stateful = True

    def __init__(self, task_id: str) -> None:
        self.message_id = task_id
        self.model = ""
        self.content = ""

    def _chunk(self, event_id: str, kind: str, **fields: Any) -> bytes:
        base = {"type": kind, "id": self.message_id, "model": self.model, "timestamp": int(time.time() * 1000)}
        return sse_frame(_encode({**base, **fields}), event_id)

    def render(self, event_id: str, event: Event) -> bytes:
        match event:
            case Start(model=model):
                self.model = model
            case Text(text=text) if text:
                self.content += text
                return self._chunk(event_id, "content", delta=text, content=self.content, role="assistant")
            case ToolCall(index=index, id=call_id, name=name, args_delta=args):
                function = {"name": name, "arguments": args}
                tool_call = {"id": call_id, "type": "function", "function": function}
                return self._chunk(event_id, "tool_call", toolCall=tool_call, index=index)
            case Complete(stop_reason=stop_reason, usage=usage):
                totals = {
                    "promptTokens": usage.input_tokens,
                    "completionTokens": usage.output_tokens,
                    "totalTokens": usage.input_tokens + usage.output_tokens,
                }
                return self._chunk(event_id, "done", finishReason=finish_reason(stop_reason), usage=totals) + DONE
            case Error(type=type_, message=message):
                error = {"message": message, "code": type_, **error_fields(event)}
                return self._chunk(event_id, "error", error=error) + DONE
        return b""


class AguiDialect:
    """Today's @tanstack/ai-client and other AG-UI clients (wire-formats §3.2); the run id is the task id."""

    stateful = True

    def __init__(self, task_id: str, thread_id: str = "") -> None:
        self.run_id = task_id
        self.thread_id = thread_id or task_id
        self.message_id = f"msg_{task_id}"
        self.model = ""
        self.text_open = False
        self.open_tools: dict[int, str] = {}
        self.calls: dict[str, tuple[str, list[str]]] = {}  # tool call id -> (name, argument fragments)

    def _frames(self, event_id: str, events: list[dict[str, Any]]) -> bytes:
        """Several AG-UI events for one of ours: one write, only the last frame carries the id."""
        last = len(events) - 1
        return b"".join(sse_frame(_encode(e), event_id if i == last else None) for i, e in enumerate(events))

    def _close_blocks(self) -> list[dict[str, Any]]:
        closing = [{"type": "TOOL_CALL_END", "toolCallId": call_id} for call_id in self.open_tools.values()]
        self.open_tools.clear()
        if self.text_open:
            closing.insert(0, {"type": "TEXT_MESSAGE_END", "messageId": self.message_id})
            self.text_open = False
        return closing

    def _client_tools(self) -> list[dict[str, Any]]:
        interrupts = []
        for call_id, (name, fragments) in self.calls.items():
            try:
                arguments = msgspec.json.decode("".join(fragments) or "{}")
            except msgspec.DecodeError:
                arguments = {}
            interrupts.append(
                {
                    "id": f"client_tool_{call_id}",
                    "reason": "tanstack:client_tool_execution",
                    "message": f"Client tool {name} is ready to run",
                    "toolCallId": call_id,
                    "metadata": {"kind": "client_tool", "toolName": name, "input": arguments},
                }
            )
        return interrupts

    def render(self, event_id: str, event: Event) -> bytes:
        out: list[dict[str, Any]] = []
        match event:
            case Start(model=model, thread_id=thread_id):
                self.model = model
                self.thread_id = thread_id or self.thread_id
                out.append({"type": "RUN_STARTED", "threadId": self.thread_id, "runId": self.run_id})
            case Text(text=text) if text:
                if not self.text_open:
                    out.append({"type": "TEXT_MESSAGE_START", "messageId": self.message_id, "role": "assistant"})
                    self.text_open = True
                out.append({"type": "TEXT_MESSAGE_CONTENT", "messageId": self.message_id, "delta": text})
            case ToolCall(index=index, id=call_id, name=name, args_delta=args):
                if index not in self.open_tools:
                    if self.text_open:  # the text before a tool call ends where the call starts (§3.2)
                        out.append({"type": "TEXT_MESSAGE_END", "messageId": self.message_id})
                        self.text_open = False
                    self.open_tools[index] = call_id
                    out.append(
                        {
                            "type": "TOOL_CALL_START",
                            "toolCallId": call_id,
                            "toolCallName": name,
                            "parentMessageId": self.message_id,
                        }
                    )
                self.calls.setdefault(call_id, (name, []))[1].append(args)
                if args:
                    out.append({"type": "TOOL_CALL_ARGS", "toolCallId": call_id, "delta": args})
            case Complete(stop_reason=stop_reason, usage=usage, model=model):
                out.extend(self._close_blocks())
                reason = finish_reason(stop_reason)
                totals = {
                    "inputTokens": usage.input_tokens,
                    "outputTokens": usage.output_tokens,
                    "totalTokens": usage.input_tokens + usage.output_tokens,
                }
                finished: dict[str, Any] = {
                    "type": "RUN_FINISHED",
                    "threadId": self.thread_id,
                    "runId": self.run_id,
                    "finishReason": reason,
                    "usage": [totals],
                    "metadata": {"tanstack": {"finishReason": reason, "model": model or self.model}},
                }
                if reason == "tool_calls" and self.calls:
                    # The gateway runs no tools: every call is the client's to run, handed over as TanStack's
                    # own server does (an interrupt per call), so the client runs it and sends the result back.
                    finished["outcome"] = {"type": "interrupt", "interrupts": self._client_tools()}
                out.append(finished)
            case Error(type=type_, message=message):
                out.extend(self._close_blocks())
                tanstack = {"threadId": self.thread_id, "runId": self.run_id}
                metadata = {"tanstack": tanstack, **error_fields(event)}
                out.append({"type": "RUN_ERROR", "message": message, "code": type_, "metadata": metadata})
        return self._frames(event_id, out) if out else b""


DialectFactory = Callable[[str, str], Dialect]


def _ui(task_id: str, thread_id: str) -> Dialect:
    from .dialects_ui import UiDialect  # imported here: it builds on this module's frames

    return UiDialect(task_id)


DIALECTS: dict[str, DialectFactory] = {
    "native": lambda task_id, thread_id: NativeDialect(),
    "text": lambda task_id, thread_id: TextDialect(),
    "status": lambda task_id, thread_id: StatusDialect(),
    "tanstack": lambda task_id, thread_id: TanStackDialect(task_id),
    "agui": lambda task_id, thread_id: AguiDialect(task_id, thread_id),
    "trellis": lambda task_id, thread_id: TrellisDialect(),
    "anthropic": lambda task_id, thread_id: AnthropicDialect(task_id),
    "openai": lambda task_id, thread_id: OpenAIDialect(task_id),
    "ui": _ui,
}
