"""The Anthropic Messages API: ``POST /v1/messages``."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections.abc import Iterator
from typing import Annotated, Any, Literal

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from .state import Emulator
from .stream import SSE, Stream, encode, json_response, request_id
from .words import DIRECTIVE, emulated_deltas, emulated_tool_id, emulated_tool_input


class _Message(msgspec.Struct):
    role: str
    content: str | list[dict[str, Any]]


class _Request(msgspec.Struct):
    model: str
    max_tokens: Annotated[int, msgspec.Meta(ge=1)]
    messages: Annotated[list[_Message], msgspec.Meta(min_length=1)]
    system: str | list[dict[str, Any]] | None = None
    stream: bool = False
    temperature: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None


class _Directives(msgspec.Struct, forbid_unknown_fields=True):
    deltas: Annotated[int, msgspec.Meta(ge=0)] | None = None
    delay_ms: Annotated[int, msgspec.Meta(ge=0)] | None = None
    fault: Literal["401", "429", "500", "529", "error_midstream", "drop", "stall"] | None = None
    after: Annotated[int, msgspec.Meta(ge=0)] = 3
    retry_after: Annotated[int, msgspec.Meta(ge=0)] = 1
    tool: str | None = None


_request_decoder = msgspec.json.Decoder(_Request)

_HTTP_FAULTS = {
    "401": (401, "authentication_error", "invalid x-api-key"),
    "429": (429, "rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit"),
    "500": (500, "api_error", "Internal server error"),
    "529": (529, "overloaded_error", "Overloaded"),
}
_ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}


class APIError(Exception):
    """An Anthropic error response: `error_response` renders it."""

    def __init__(self, status: int, error_type: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type = error_type
        self.message = message
        self.headers = headers or {}


def error_response(request: Request, exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        status = exc.status_code
        kind = _ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
        exc = APIError(status, kind, exc.detail)
    assert isinstance(exc, APIError)
    headers = {"request-id": request_id(), **exc.headers}
    body = {"type": "error", "error": {"type": exc.type, "message": exc.message}, "request_id": headers["request-id"]}
    return Response(encode(body), exc.status, headers, media_type="application/json")


def texts(content: object) -> Iterator[str]:
    """Every text in a system prompt or message content, tool results' contents included."""
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for block in content:
            if isinstance(block, dict):
                if isinstance(text := block.get("text"), str):
                    yield text
                yield from texts(block.get("content"))


def _prompt(messages: list[_Message]) -> str:
    """The text of the last user message: its text blocks or, failing those, its tool results."""
    for message in reversed(messages):
        if message.role != "user":
            continue
        if isinstance(message.content, str):
            return message.content
        found = [block.get("text") for block in message.content if block.get("type") == "text"]
        if found:
            return "".join(text for text in found if isinstance(text, str))
        return "".join(texts([block for block in message.content if block.get("type") == "tool_result"]))
    return ""


def directives(prompt: str) -> _Directives:
    try:
        return msgspec.convert(dict(DIRECTIVE.findall(prompt)), _Directives, strict=False)
    except msgspec.ValidationError as exc:
        raise APIError(400, "invalid_request_error", f"bad emulator directive: {exc}") from None


@dataclasses.dataclass
class _Answer:
    request: _Request
    prompt: str
    deltas: list[str]
    tool: str | None
    stop_reason: str

    @property
    def input_tokens(self) -> int:
        chars = sum(len(text) for text in texts(self.request.system))
        chars += sum(len(text) for message in self.request.messages for text in texts(message.content))
        return max(1, chars // 4)

    @property
    def output_tokens(self) -> int:
        return len(self.deltas) + (3 if self.tool else 0)

    def message(self) -> dict[str, Any]:
        content: list[dict[str, Any]] = [{"type": "text", "text": "".join(self.deltas)}]
        if self.tool:
            content.append(self._tool_block(emulated_tool_input(self.prompt)))
        return self._message(content, self.stop_reason, self.output_tokens)

    def frames(self) -> tuple[list[bytes], list[bytes], list[bytes]]:
        """The SSE frames: those before the text deltas, the deltas, those after."""
        head = [
            _frame({"type": "message_start", "message": self._message([], None, 1)}),
            _frame({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            _frame({"type": "ping"}),
        ]
        deltas = [
            _frame({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}})
            for text in self.deltas
        ]
        tail = [_frame({"type": "content_block_stop", "index": 0})]
        if self.tool:
            arguments = encode(emulated_tool_input(self.prompt)).decode()
            half = len(arguments) // 2
            tail.append(_frame({"type": "content_block_start", "index": 1, "content_block": self._tool_block({})}))
            for fragment in ("", arguments[:half], arguments[half:]):
                delta = {"type": "input_json_delta", "partial_json": fragment}
                tail.append(_frame({"type": "content_block_delta", "index": 1, "delta": delta}))
            tail.append(_frame({"type": "content_block_stop", "index": 1}))
        stop: dict[str, Any] = {"stop_reason": self.stop_reason, "stop_sequence": None}
        usage = {"output_tokens": self.output_tokens}
        tail.append(_frame({"type": "message_delta", "delta": stop, "usage": usage}))
        tail.append(_frame({"type": "message_stop"}))
        return head, deltas, tail

    def _message(self, content: list[dict[str, Any]], stop_reason: str | None, output_tokens: int) -> dict[str, Any]:
        return {
            "id": "msg_emu_" + secrets.token_hex(12),
            "type": "message",
            "role": "assistant",
            "model": self.request.model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": output_tokens},
        }

    def _tool_block(self, tool_input: dict[str, str]) -> dict[str, Any]:
        return {"type": "tool_use", "id": emulated_tool_id(self.prompt), "name": self.tool, "input": tool_input}


def _frame(data: dict[str, Any]) -> bytes:
    event: str = data["type"]
    return b"event: " + event.encode() + b"\ndata: " + encode(data) + b"\n\n"


def _authenticate(request: Request, api_key: str | None) -> None:
    if api_key is None:
        return
    headers = request.headers
    if headers.get("x-api-key") != api_key and headers.get("authorization") != f"Bearer {api_key}":
        raise APIError(401, "authentication_error", "invalid x-api-key")


async def messages(emulator: Emulator, request: Request) -> Response:
    emulator.stats.messages += 1
    _authenticate(request, emulator.api_key)
    raw = await request.body()
    emulator.stats.bodies.append(raw)
    try:
        body = _request_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise APIError(400, "invalid_request_error", str(exc)) from None
    prompt = _prompt(body.messages)
    found = directives(prompt)
    fault = found.fault
    if fault == "error_midstream" and not body.stream:
        fault = "529"  # what the real API answers a non-streaming request when overloaded
    if fault in _HTTP_FAULTS:
        status, kind, message = _HTTP_FAULTS[fault]
        headers = {"retry-after": str(found.retry_after)} if status == 429 else None
        raise APIError(status, kind, message, headers)

    n = emulator.deltas if found.deltas is None else found.deltas
    delay = emulator.delay if found.delay_ms is None else found.delay_ms / 1000
    deltas = emulated_deltas(prompt, n)[: body.max_tokens]
    truncated = len(deltas) < n
    tool = None if truncated else found.tool
    stop_reason = "max_tokens" if truncated else "tool_use" if tool else "end_turn"
    answer = _Answer(body, prompt, deltas, tool, stop_reason)

    if not body.stream:
        if fault == "drop" or fault == "stall":
            return Stream([], [], [], media_type="application/json", delay=0, end=fault)
        if found.delay_ms is not None:
            await asyncio.sleep(delay * len(deltas))
        return json_response(answer.message())

    head, delta_frames, tail = answer.frames()
    match fault:
        case "error_midstream":
            error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
            return Stream(head, delta_frames[: found.after], [_frame(error)], media_type=SSE, delay=delay)
        case "drop" | "stall":
            delta_frames = delta_frames[: found.after]
            return Stream(head, delta_frames, [], media_type=SSE, delay=delay, end=fault)
    return Stream(head, delta_frames, tail, media_type=SSE, delay=delay)
