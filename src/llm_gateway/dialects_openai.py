"""The ``openai`` dialect: a task's log as OpenAI chat completions (wire-formats §2); pure.

Streamed (`OpenAIDialect`): ``chat.completion.chunk``s (the role, the text, the tool calls, the finish reason;
with ``include_usage`` a last chunk with the usage and no choices), then ``data: [DONE]``. A failure is a chunk
holding an ``error`` object, which the openai SDK raises as an ``APIError``, then ``[DONE]``. Whole
(`chat_completion`): one ``chat.completion``.

- Every rendering of a task says the same: the id is ``chatcmpl-<task id>`` and ``created`` the second of the
  log's first event id (a millisecond stamp), on any replica, live or resumed.
- Our tool calls are numbered by content block; OpenAI's ``tool_calls[].index`` counts calls from 0. Only a
  call's first fragment carries its id and name. A call that got no arguments (a tool without parameters, from
  Claude) gets ``{}`` before the finish, so clients can parse them.
- ``include_usage`` is the POST's ``stream_options``; the log does not keep it, so a re-read through
  ``?format=openai`` always ends with the usage chunk (a client of OpenAI's stream must take a chunk without
  choices anyway).
- The finish reasons, Anthropic's stop reasons in OpenAI's words, are shared with the TanStack dialects.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import msgspec

from .errors import STATUS_BY_TYPE
from .errors_wire import OpenAIErrorBody, openai_error
from .events import Complete, Error, Event, Start, Text, TokenUsage, ToolCall
from .store import parse_event_id

_encode = msgspec.json.Encoder().encode
_DONE = b"data: [DONE]\n\n"

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def finish_reason(stop_reason: str | None) -> str | None:
    """Anthropic's stop_reason as OpenAI's finish_reason (an OpenAI one passes through)."""
    if stop_reason is None:
        return None
    return FINISH_REASONS.get(stop_reason, stop_reason if stop_reason in ("stop", "length", "tool_calls") else None)


class FunctionDelta(msgspec.Struct, omit_defaults=True):
    arguments: str
    name: str | None = None


class ToolCallDelta(msgspec.Struct, omit_defaults=True):
    index: int
    function: FunctionDelta
    id: str | None = None
    type: Literal["function"] | None = None


class Delta(msgspec.Struct, omit_defaults=True):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(msgspec.Struct):
    index: int
    delta: Delta
    finish_reason: str | None


class CompletionUsage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletionChunk(msgspec.Struct):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: CompletionUsage | None


class FunctionCall(msgspec.Struct):
    name: str
    arguments: str


class ToolCallOut(msgspec.Struct):
    id: str
    type: Literal["function"]
    function: FunctionCall


class AssistantOut(msgspec.Struct, omit_defaults=True):
    role: Literal["assistant"]
    content: str | None
    refusal: None
    tool_calls: list[ToolCallOut] | None = None


class Choice(msgspec.Struct):
    index: int
    message: AssistantOut
    finish_reason: str
    logprobs: None


class ChatCompletion(msgspec.Struct):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage


def completion_id(task_id: str) -> str:
    return f"chatcmpl-{task_id}"


def created_of(event_id: str) -> int:
    return parse_event_id(event_id)[0] // 1000


def usage_of(usage: TokenUsage) -> CompletionUsage:
    return CompletionUsage(usage.input_tokens, usage.output_tokens, usage.input_tokens + usage.output_tokens)


def _frame(data: bytes, event_id: str | None) -> bytes:
    # msgspec's JSON holds no newline, so one data: line is the whole frame.
    return b"id: %s\ndata: %s\n\n" % (event_id.encode(), data) if event_id else b"data: %s\n\n" % data


def error_chunk(event: Error) -> OpenAIErrorBody:
    error = openai_error(event.type, event.message, STATUS_BY_TYPE[event.type])
    return OpenAIErrorBody(msgspec.structs.replace(error, retryable=event.retryable, retry_after=event.retry_after))


class OpenAIDialect:
    """One stream's renderer; it counts the tool calls it has seen, so it is primed on resume."""

    stateful = True

    def __init__(self, task_id: str, *, include_usage: bool = True) -> None:
        self.id = completion_id(task_id)
        self.include_usage = include_usage
        self.model = ""
        self.created = 0
        self.calls: dict[str, int] = {}  # our call id -> OpenAI's index
        self.silent: set[str] = set()  # calls with no arguments yet

    def _chunk(self, delta: Delta, finish: str | None = None) -> bytes:
        choice = ChunkChoice(0, delta, finish)
        return _encode(ChatCompletionChunk(self.id, "chat.completion.chunk", self.created, self.model, [choice], None))

    def render(self, event_id: str, event: Event) -> bytes:
        self.created = self.created or created_of(event_id)
        match event:
            case Start(model=model):
                self.model = model
                return _frame(self._chunk(Delta(role="assistant", content="")), event_id)
            case Text(text=text) if text:
                return _frame(self._chunk(Delta(content=text)), event_id)
            case ToolCall():
                fragment = self._fragment(event)
                return b"" if fragment is None else _frame(self._chunk(Delta(tool_calls=[fragment])), event_id)
            case Complete(stop_reason=stop_reason, usage=usage):
                payloads = [
                    self._chunk(Delta(tool_calls=[self._empty(call)]))
                    for call in sorted(self.silent, key=self.calls.__getitem__)
                ]
                payloads.append(self._chunk(Delta(), finish_reason(stop_reason) or "stop"))
                if self.include_usage:
                    last = ChatCompletionChunk(
                        self.id, "chat.completion.chunk", self.created, self.model, [], usage_of(usage)
                    )
                    payloads.append(_encode(last))
                last_one = len(payloads) - 1
                return b"".join(_frame(p, event_id if i == last_one else None) for i, p in enumerate(payloads)) + _DONE
            case Error():
                return _frame(_encode(error_chunk(event)), event_id) + _DONE
        return b""

    def _fragment(self, event: ToolCall) -> ToolCallDelta | None:
        index = self.calls.get(event.id)
        if index is None:
            index = self.calls[event.id] = len(self.calls)
            if not event.args_delta:
                self.silent.add(event.id)
            return ToolCallDelta(index, FunctionDelta(event.args_delta, event.name), event.id, "function")
        if not event.args_delta:
            return None
        self.silent.discard(event.id)
        return ToolCallDelta(index, FunctionDelta(event.args_delta))

    def _empty(self, call_id: str) -> ToolCallDelta:
        return ToolCallDelta(self.calls[call_id], FunctionDelta("{}"))


def chat_completion(task_id: str, complete: Complete, log: Sequence[tuple[str, Event]]) -> ChatCompletion:
    """The whole answer: ``complete``'s text and usage, and the tool calls of ``log`` (the task's events)."""
    calls: dict[str, tuple[str, list[str]]] = {}
    for _, event in log:
        if isinstance(event, ToolCall):
            calls.setdefault(event.id, (event.name, []))[1].append(event.args_delta)
    tool_calls = [
        ToolCallOut(call_id, "function", FunctionCall(name, "".join(fragments) or "{}"))
        for call_id, (name, fragments) in calls.items()
    ]
    content = complete.text or (None if tool_calls else "")
    message = AssistantOut("assistant", content, None, tool_calls or None)
    choice = Choice(0, message, finish_reason(complete.stop_reason) or "stop", None)
    created = created_of(log[0][0]) if log else 0
    return ChatCompletion(
        completion_id(task_id), "chat.completion", created, complete.model, [choice], usage_of(complete.usage)
    )
