"""OpenAI's chat completions: ``POST /v1/chat/completions``."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from typing import Annotated, Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from .anthropic import APIError, directives, texts
from .state import Emulator
from .stream import SSE, Stream, encode, json_response, request_id
from .words import emulated_call_id, emulated_deltas, emulated_tool_input


class _ChatMessage(msgspec.Struct):
    role: str
    content: str | list[dict[str, Any]] | None = None


class _StreamOptions(msgspec.Struct):
    include_usage: bool = False


class _ChatRequest(msgspec.Struct):
    model: str
    messages: Annotated[list[_ChatMessage], msgspec.Meta(min_length=1)]
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    max_completion_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    stream: bool = False
    stream_options: _StreamOptions | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None


_chat_request_decoder = msgspec.json.Decoder(_ChatRequest)

_CHAT_FAULTS: dict[str, tuple[int, str, str | None, str]] = {
    "401": (401, "invalid_request_error", "invalid_api_key", "Incorrect API key provided"),
    "429": (429, "requests", "rate_limit_exceeded", "Rate limit reached for requests"),
    "500": (500, "server_error", None, "The server had an error while processing your request"),
    "529": (503, "server_error", "overloaded", "The engine is currently overloaded, please try again later"),
}


class ChatError(APIError):
    """An OpenAI error response: `chat_error_response` renders it."""

    def __init__(
        self, status: int, error_type: str, code: str | None, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status, error_type, message, headers)
        self.code = code


def _chat_error(error_type: str, code: str | None, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}


def chat_error_response(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ChatError)
    headers = {"x-request-id": request_id(), **exc.headers}
    body = _chat_error(exc.type, exc.code, exc.message)
    return Response(encode(body), exc.status, headers, media_type="application/json")


def _chat_text(content: str | list[dict[str, Any]] | None) -> str:
    if isinstance(content, list):
        return "".join(
            part["text"] for part in content if part.get("type") == "text" and isinstance(part.get("text"), str)
        )
    return content or ""


def _chat_prompt(messages: list[_ChatMessage]) -> str:
    """The trailing tool messages' contents if the conversation ends with some, else the last user message's text."""
    trailing = []
    for message in reversed(messages):
        if message.role != "tool":
            break
        trailing.append(_chat_text(message.content))
    if trailing:
        return "".join(reversed(trailing))
    return next((_chat_text(m.content) for m in reversed(messages) if m.role == "user"), "")


@dataclasses.dataclass
class _ChatAnswer:
    request: _ChatRequest
    prompt: str
    deltas: list[str]
    tool: str | None
    finish_reason: str
    id: str = dataclasses.field(default_factory=lambda: "chatcmpl-emu-" + secrets.token_hex(12))
    created: int = dataclasses.field(default_factory=lambda: int(time.time()))

    @property
    def usage(self) -> dict[str, int]:
        chars = sum(len(text) for message in self.request.messages for text in texts(message.content))
        prompt_tokens, completion_tokens = max(1, chars // 4), len(self.deltas) + (3 if self.tool else 0)
        total = prompt_tokens + completion_tokens
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": total}

    @property
    def include_usage(self) -> bool:
        return self.request.stream_options is not None and self.request.stream_options.include_usage

    def completion(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.deltas), "refusal": None}
        if self.tool:
            arguments = encode(emulated_tool_input(self.prompt)).decode()
            function = {"name": self.tool, "arguments": arguments}
            message["tool_calls"] = [{"id": emulated_call_id(self.prompt), "type": "function", "function": function}]
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish_reason}
        return {**self._base("chat.completion"), "choices": [choice], "usage": self.usage}

    def frames(self) -> tuple[list[bytes], list[bytes], list[bytes]]:
        """The SSE frames: the role chunk, the text deltas, then tool calls, finish, usage and ``[DONE]``."""
        head = [self._chunk({"role": "assistant", "content": ""})]
        deltas = [self._chunk({"content": text}) for text in self.deltas]
        tail = []
        if self.tool:
            arguments = encode(emulated_tool_input(self.prompt)).decode()
            half = len(arguments) // 2
            opening = {"index": 0, "id": emulated_call_id(self.prompt), "type": "function"}
            opening["function"] = {"name": self.tool, "arguments": ""}
            tail.append(self._chunk({"tool_calls": [opening]}))
            for fragment in (arguments[:half], arguments[half:]):
                tail.append(self._chunk({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]}))
        tail.append(self._chunk({}, self.finish_reason))
        if self.include_usage:
            tail.append(_data_frame({**self._base("chat.completion.chunk"), "choices": [], "usage": self.usage}))
        tail.append(b"data: [DONE]\n\n")
        return head, deltas, tail

    def _base(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.request.model}

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        chunk = {**self._base("chat.completion.chunk"), "choices": [choice]}
        if self.include_usage:
            chunk["usage"] = None  # as OpenAI sends it on every chunk but the last
        return _data_frame(chunk)


def _data_frame(data: dict[str, Any]) -> bytes:
    return b"data: " + encode(data) + b"\n\n"


async def chat_completions(emulator: Emulator, request: Request) -> Response:
    emulator.stats.chat_completions += 1
    if emulator.api_key is not None and request.headers.get("authorization") != f"Bearer {emulator.api_key}":
        raise ChatError(401, "invalid_request_error", "invalid_api_key", "Incorrect API key provided")
    raw = await request.body()
    emulator.stats.bodies.append(raw)
    try:
        body = _chat_request_decoder.decode(raw)
        prompt = _chat_prompt(body.messages)
        found = directives(prompt)
    except msgspec.DecodeError as exc:
        raise ChatError(400, "invalid_request_error", None, str(exc)) from None
    except APIError as exc:
        raise ChatError(exc.status, exc.type, None, exc.message) from None
    fault = found.fault
    if fault == "error_midstream" and not body.stream:
        fault = "529"
    if fault in _CHAT_FAULTS:
        status, kind, code, message = _CHAT_FAULTS[fault]
        headers = {"retry-after": str(found.retry_after)} if status == 429 else None
        raise ChatError(status, kind, code, message, headers)

    n = emulator.deltas if found.deltas is None else found.deltas
    delay = emulator.delay if found.delay_ms is None else found.delay_ms / 1000
    limit = body.max_completion_tokens or body.max_tokens
    deltas = emulated_deltas(prompt, n)[:limit]
    truncated = len(deltas) < n
    tool = None if truncated else found.tool
    answer = _ChatAnswer(body, prompt, deltas, tool, "length" if truncated else "tool_calls" if tool else "stop")

    if not body.stream:
        if fault == "drop" or fault == "stall":
            return Stream([], [], [], media_type="application/json", delay=0, end=fault)
        if found.delay_ms is not None:
            await asyncio.sleep(delay * len(deltas))
        return json_response(answer.completion())

    head, delta_frames, tail = answer.frames()
    match fault:
        case "error_midstream":
            error = _data_frame(_chat_error("server_error", "overloaded", "The server is overloaded"))
            return Stream(head, delta_frames[: found.after], [error], media_type=SSE, delay=delay)
        case "drop" | "stall":
            delta_frames = delta_frames[: found.after]
            return Stream(head, delta_frames, [], media_type=SSE, delay=delay, end=fault)
    return Stream(head, delta_frames, tail, media_type=SSE, delay=delay)
