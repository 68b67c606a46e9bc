"""The event log's types: one tagged union, encoded with msgspec (API.md §1)."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from .errors import ErrorType

Status = Literal["queued", "running", "completed", "failed", "cancelled", "interrupted"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled", "interrupted"})


class TokenUsage(msgspec.Struct, frozen=True):
    input_tokens: int = 0
    output_tokens: int = 0


class Start(msgspec.Struct, frozen=True, tag="start", tag_field="event", omit_defaults=True):
    task_id: str
    model: str
    thread_id: str = ""  # an AG-UI client's conversation, so a later join can name it
    message_id: str = ""  # the id an AI SDK client knows the answer by (a UIMessage's), in every replay


class Text(msgspec.Struct, frozen=True, tag="text", tag_field="event"):
    index: int
    text: str


class ToolCall(msgspec.Struct, frozen=True, tag="tool_call", tag_field="event"):
    """One fragment of a tool call; ``id`` and ``name`` repeat on every fragment of the same call."""

    index: int
    id: str
    name: str
    args_delta: str


class Usage(msgspec.Struct, frozen=True, tag="usage", tag_field="event"):
    input_tokens: int
    output_tokens: int


class Complete(msgspec.Struct, frozen=True, tag="complete", tag_field="event", omit_defaults=True):
    text: str
    stop_reason: str | None
    usage: TokenUsage
    model: str
    stop_sequence: str | None = None  # which of the request's stop_sequences ended it (Claude says)


class Error(msgspec.Struct, frozen=True, tag="error", tag_field="event", omit_defaults=True):
    type: ErrorType
    message: str
    retryable: bool = False
    retry_after: float | None = None


class Progress(msgspec.Struct, frozen=True, tag="progress", tag_field="event", omit_defaults=True):
    """A Trellis task's status, in seed 000's WebSocket shape (``status``: processing|completed|failed|error)."""

    status: str
    message: str
    data: str | None = None
    full_response: Any = None


Event = Start | Text | ToolCall | Usage | Progress | Complete | Error
Terminal = Complete | Error

encoder = msgspec.json.Encoder()
event_decoder: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Event)


def encode_event(event: Event) -> bytes:
    return encoder.encode(event)


def decode_event(data: bytes | str) -> Event:
    return event_decoder.decode(data)


class TaskResult(msgspec.Struct, frozen=True):
    response: str
    model: str
    stop_reason: str | None
    usage: TokenUsage


class TaskError(msgspec.Struct, frozen=True):
    type: ErrorType
    message: str


class TaskInfo(msgspec.Struct, kw_only=True):
    task_id: str
    status: Status
    created_at: str
    updated_at: str
    model: str = ""
    fingerprint: str = ""
    owner: str = ""
    result: TaskResult | None = None
    error: TaskError | None = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES


def terminal_outcome(event: Terminal) -> tuple[Status, TaskResult | None, TaskError | None]:
    """What a terminal event makes of its task: status, result, error."""
    if isinstance(event, Complete):
        return "completed", TaskResult(event.text, event.model, event.stop_reason, event.usage), None
    status: Status = "failed"
    if event.type in ("cancelled", "interrupted"):
        status = "cancelled" if event.type == "cancelled" else "interrupted"
    return status, None, TaskError(event.type, event.message)
