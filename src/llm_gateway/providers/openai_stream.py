"""OpenAI chat-completions streams -> our events (wire-formats §2): the wire types and a pure ``ChunkMapper``.

- Tool-call fragments are keyed by ``index``, but providers omit or reuse it (wire-formats §7): a fragment
  with an id never seen opens a new call even at a used index; one with neither index nor id continues
  the latest call.
- ``finish_reason: "stop"`` after tool calls (Gemini says so) becomes ``tool_use``.
- An HTTP error's status decides our error type; an in-stream error's type/code/status strings do.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import msgspec

from ..errors import GatewayError
from ..events import Complete, Event, Text, TokenUsage, ToolCall, Usage
from .base import error_from_upstream

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


class _WireError(msgspec.Struct):
    message: str = ""
    type: str | None = None
    code: str | int | None = None
    status: str | None = None


class _ErrorBody(msgspec.Struct):
    error: _WireError | str | None = None


class _Function(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _ToolFragment(msgspec.Struct):
    index: int | None = None
    id: str | None = None
    function: _Function | None = None


class _Delta(msgspec.Struct):
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[_ToolFragment] | None = None


class _Choice(msgspec.Struct):
    index: int = 0
    delta: _Delta | None = None
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class _Chunk(msgspec.Struct):
    model: str | None = None
    choices: list[_Choice] | None = None
    usage: _Usage | None = None
    error: _WireError | str | None = None


_decode_chunk = msgspec.json.Decoder(_Chunk).decode
_error_body_decoder: msgspec.json.Decoder[_ErrorBody | list[_ErrorBody]] = msgspec.json.Decoder(
    _ErrorBody | list[_ErrorBody]
)

# Substrings of an error's type/code/status (OpenAI, Cerebras, Gemini) -> the Anthropic type base.py maps.
_ERROR_KINDS = (
    (("rate_limit", "rate limit", "resource_exhausted", "too_many_requests", "quota"), "rate_limit_error"),
    (("auth", "api_key", "permission", "forbidden"), "authentication_error"),
    (("overloaded", "unavailable", "capacity"), "overloaded_error"),
    (("timeout", "deadline_exceeded"), "timeout_error"),
    (("invalid", "not_found", "failed_precondition", "out_of_range", "context_length"), "invalid_request_error"),
    (("server_error", "internal", "api_error"), "api_error"),
)


def _error_kind(error: _WireError) -> str | None:
    words = f"{error.type} {error.code} {error.status}".lower()
    return next((kind for needles, kind in _ERROR_KINDS if any(n in words for n in needles)), None)


def upstream_error(error: _WireError | str | None, status: int, retry_after: str | None = None) -> GatewayError:
    """Our error for an upstream one: by HTTP ``status`` if it is an error status, else by the error's strings."""
    wire = error if isinstance(error, _WireError) else _WireError(message=error or "")
    kind = None
    if status < 400:
        kind = _error_kind(wire)
        if kind is None and isinstance(wire.code, int) and 400 <= wire.code < 600:
            status = wire.code  # Gemini puts the HTTP status it would have sent in ``code``
    return error_from_upstream(status, kind, wire.message or None, retry_after)


def error_in_body(raw: bytes) -> _WireError | str | None:
    """The error of a JSON error body: ``{"error": …}`` or Gemini's ``[{"error": …}]``; None if there is none."""
    try:
        body = _error_body_decoder.decode(raw)
    except msgspec.DecodeError:
        return None
    for item in body if isinstance(body, list) else [body]:
        if item.error is not None:
            return item.error
    return None


class _Call(msgspec.Struct):
    id: str
    name: str


class ChunkMapper:
    """Turns the ``data`` payloads of a chat-completions stream into our events; pure, so tested without a network."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.parts: list[str] = []
        self.calls: list[_Call] = []
        self._by_index: dict[int, int] = {}
        self._by_id: dict[str, int] = {}
        self.usage = TokenUsage()
        self.stop_reason: str | None = None
        self.finished = False  # a finish_reason arrived
        self.done = False  # [DONE] arrived

    def feed(self, payloads: list[bytes]) -> Iterator[Event]:
        """Events for a run of payloads; an error payload raises, after the events before it."""
        for payload in payloads:
            if self.done:
                continue
            if payload.strip() == b"[DONE]":
                self.done = True
            elif payload.lstrip().startswith(b"["):
                raise upstream_error(error_in_body(payload), 200)
            else:
                try:
                    chunk = _decode_chunk(payload)
                except msgspec.DecodeError:
                    raise GatewayError("upstream_error", "upstream sent a malformed stream chunk") from None
                if chunk.error is not None:
                    raise upstream_error(chunk.error, 200)
                yield from self._chunk(chunk)

    def complete(self) -> Complete:
        if not (self.done or self.finished):
            raise GatewayError("upstream_error", "upstream stream ended before its finish_reason or [DONE]")
        return Complete("".join(self.parts), self.stop_reason, self.usage, self.model)

    def _chunk(self, chunk: _Chunk) -> list[Event]:
        self.model = chunk.model or self.model
        events: list[Event] = []
        for choice in chunk.choices or ():
            if choice.index != 0:
                continue  # we ask for one choice
            delta = choice.delta
            if delta is not None:
                for text in (delta.content, delta.refusal):
                    if text:
                        self.parts.append(text)
                        events.append(Text(0, text))
                for fragment in delta.tool_calls or ():
                    events.extend(self._tool_fragment(fragment))
            if choice.finish_reason:
                self.finished = True
                reason = STOP_REASONS.get(choice.finish_reason, choice.finish_reason)
                self.stop_reason = "tool_use" if reason == "end_turn" and self.calls else reason
        if chunk.usage is not None:
            # Some providers repeat a cumulative usage on several chunks: keep the last, never sum.
            self.usage = TokenUsage(chunk.usage.prompt_tokens or 0, chunk.usage.completion_tokens or 0)
            events.append(Usage(self.usage.input_tokens, self.usage.output_tokens))
        return events

    def _tool_fragment(self, fragment: _ToolFragment) -> list[Event]:
        function = fragment.function or _Function()
        events: list[Event] = []
        slot = self._slot(fragment)
        if slot is None:
            slot = len(self.calls)
            call = _Call(fragment.id or "call_" + secrets.token_hex(12), function.name or "")
            self.calls.append(call)
            self._by_id[call.id] = slot
            events.append(ToolCall(1 + slot, call.id, call.name, ""))
        if fragment.index is not None:
            self._by_index[fragment.index] = slot
        call = self.calls[slot]
        call.name = call.name or function.name or ""
        if function.arguments:
            events.append(ToolCall(1 + slot, call.id, call.name, function.arguments))
        return events

    def _slot(self, fragment: _ToolFragment) -> int | None:
        """The call a fragment continues, or None if it opens a new one."""
        if fragment.id and fragment.id in self._by_id:
            return self._by_id[fragment.id]
        if fragment.id:
            return None
        if fragment.index is not None:
            return self._by_index.get(fragment.index)
        return len(self.calls) - 1 if self.calls else None
