"""The ``ui`` dialect: the Vercel AI SDK's UI message stream (wire-formats §8), and the UIMessage it builds.

One generation is one assistant message: ``start{messageId}``, ``start-step``, its text and tool calls,
``finish-step``, ``finish{finishReason}``, then ``[DONE]``. Chunks carry only fields of the ``ai`` package's
``uiMessageChunkSchema``. A tool call's input is whole once the next block starts or the message ends: then
``tool-input-available``. A stopped generation ends with ``abort``, as the AI SDK's own server ends one; a failed
one with ``error{errorText}``, after a transient ``data-error`` carrying the error's type, ``retryable`` and
``retry_after`` (the one chunk with room for them; ``useChat`` hands it to ``onData`` and keeps no part of it).

``assistant_message`` folds the same chunks into the UIMessage a client builds from them, as ``useChat`` does,
so the chat keeps exactly what its clients saw.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from .dialects import DONE, sse_frame
from .events import Complete, Error, Event, Start, Text, ToolCall
from .ui_messages import UIMessage

Chunk = dict[str, Any]
HEADERS = {"x-vercel-ai-ui-message-stream": "v1"}

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "stop": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "length": "length",
    "tool_use": "tool-calls",
    "tool_calls": "tool-calls",
    "refusal": "content-filter",
    "content_filter": "content-filter",
}

_encode = msgspec.json.Encoder().encode


def ui_finish_reason(stop_reason: str | None) -> str | None:
    """Anthropic's (or an OpenAI-compatible upstream's) stop reason as the AI SDK's finishReason."""
    return None if stop_reason is None else FINISH_REASONS.get(stop_reason, "other")


@dataclass
class _Call:
    id: str
    name: str
    fragments: list[str] = field(default_factory=list)


class UiChunks:
    """The chunks of one generation, event by event (it remembers the open text part and tool call)."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.texts = 0
        self.text_id: str | None = None
        self.call: _Call | None = None

    def of(self, event: Event) -> list[Chunk]:
        match event:
            case Start(message_id=message_id):
                return [{"type": "start", "messageId": message_id or f"msg_{self.task_id}"}, {"type": "start-step"}]
            case Text(text=text) if text:
                out = self._end_call()
                if self.text_id is None:
                    self.texts += 1
                    self.text_id = f"text-{self.texts}"
                    out.append({"type": "text-start", "id": self.text_id})
                return [*out, {"type": "text-delta", "id": self.text_id, "delta": text}]
            case ToolCall(id=call_id, name=name, args_delta=args):
                out = []
                if self.call is None or self.call.id != call_id:
                    out = self._end_text() + self._end_call()
                    self.call = _Call(call_id, name)
                    out.append({"type": "tool-input-start", "toolCallId": call_id, "toolName": name})
                if args:
                    self.call.fragments.append(args)
                    out.append({"type": "tool-input-delta", "toolCallId": call_id, "inputTextDelta": args})
                return out
            case Complete(stop_reason=stop_reason):
                finish: Chunk = {"type": "finish"}
                if (reason := ui_finish_reason(stop_reason)) is not None:
                    finish["finishReason"] = reason
                return [*self._end_text(), *self._end_call(), {"type": "finish-step"}, finish]
            case Error(type="cancelled", message=message):
                return [*self._end_text(), {"type": "abort", "reason": message}]
            case Error(type=type_, message=message, retryable=retryable, retry_after=retry_after):
                data: dict[str, Any] = {"type": type_, "retryable": retryable}
                if retry_after is not None:
                    data["retry_after"] = retry_after
                failure = {"type": "data-error", "data": data, "transient": True}
                return [*self._end_text(), failure, {"type": "error", "errorText": message}]
        return []

    def _end_text(self) -> list[Chunk]:
        if self.text_id is None:
            return []
        ended, self.text_id = self.text_id, None
        return [{"type": "text-end", "id": ended}]

    def _end_call(self) -> list[Chunk]:
        if self.call is None:
            return []
        call, self.call = self.call, None
        raw = "".join(call.fragments) or "{}"
        try:
            arguments = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            arguments = None
        named = {"toolCallId": call.id, "toolName": call.name}
        if not isinstance(arguments, dict):
            return [
                {"type": "tool-input-error", **named, "input": raw, "errorText": "the tool input is not a JSON object"}
            ]
        return [{"type": "tool-input-available", **named, "input": arguments}]


class UiDialect:
    stateful = True
    headers = HEADERS

    def __init__(self, task_id: str) -> None:
        self.chunks = UiChunks(task_id)

    def render(self, event_id: str, event: Event) -> bytes:
        chunks = self.chunks.of(event)
        last = len(chunks) - 1
        out = b"".join(sse_frame(_encode(c), event_id if i == last else None) for i, c in enumerate(chunks))
        return out + DONE if isinstance(event, Complete | Error) else out


def assistant_message(task_id: str, log: Iterable[Event]) -> UIMessage | None:
    """The answer a client builds from the log's chunks, or None if it holds neither text nor a tool call."""
    renderer = UiChunks(task_id)
    message_id = ""
    parts: list[Chunk] = []
    by_id: dict[str, Chunk] = {}
    for event in log:
        for chunk in renderer.of(event):
            match chunk:
                case {"type": "start", "messageId": str(message_id)}:
                    pass
                case {"type": "start-step"}:
                    parts.append({"type": "step-start"})
                case {"type": "text-start", "id": id_}:
                    by_id[id_] = {"type": "text", "text": "", "state": "streaming"}
                    parts.append(by_id[id_])
                case {"type": "text-delta", "id": id_, "delta": delta}:
                    by_id[id_]["text"] += delta
                case {"type": "text-end", "id": id_}:
                    by_id[id_]["state"] = "done"
                case {"type": "tool-input-start", "toolCallId": id_, "toolName": name}:
                    by_id[id_] = {"type": f"tool-{name}", "toolCallId": id_, "state": "input-streaming"}
                    parts.append(by_id[id_])
                case {"type": "tool-input-delta", "toolCallId": id_, "inputTextDelta": delta}:
                    by_id[id_]["rawInput"] = by_id[id_].get("rawInput", "") + delta
                case {"type": "tool-input-available", "toolCallId": id_, "input": input_}:
                    by_id[id_].pop("rawInput", None)
                    by_id[id_].update(state="input-available", input=input_)
                case {"type": "tool-input-error", "toolCallId": id_, "input": input_, "errorText": error}:
                    by_id[id_].pop("rawInput", None)
                    by_id[id_].update(state="output-error", input=input_, errorText=error)
    if not any(part["type"] != "step-start" for part in parts):
        return None
    return UIMessage(id=message_id, role="assistant", parts=parts)
