"""OpenAI's chat completions, ``POST /v1/chat/completions``: its request, its completion and chunks, its errors.

- The key goes in ``Authorization: Bearer`` only.
- A conversation ending in ``tool`` messages has their contents as its prompt, which is what the Messages side
  makes of the same turn (tool results only).
- ``max_completion_tokens`` or ``max_tokens`` cut the text (``finish_reason: "length"``).
- ``tool=NAME`` adds a tool call `emulated_call_id`, whose arguments a stream sends in two fragments.
- Errors are ``{"error": {message, type, param, code}}``; fault 529 is a 503, ``error_midstream`` a
  ``data: {"error": …}`` frame.
"""

from __future__ import annotations

import secrets
import time
from typing import Annotated, Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from .answer import Answer, Ending, input_tokens
from .plan import BadDirective, HTTPFault, plan
from .state import Emulator
from .stream import Frames, UpstreamError, encode, request_id, respond
from .words import emulated_call_id


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

_CHAT_FAULTS: dict[HTTPFault, tuple[int, str, str | None, str]] = {
    "401": (401, "invalid_request_error", "invalid_api_key", "Incorrect API key provided"),
    "429": (429, "requests", "rate_limit_exceeded", "Rate limit reached for requests"),
    "500": (500, "server_error", None, "The server had an error while processing your request"),
    "529": (503, "server_error", "overloaded", "The engine is currently overloaded, please try again later"),
}
_FINISH_REASONS: dict[Ending, str] = {"truncated": "length", "tool": "tool_calls", "done": "stop"}


class ChatError(UpstreamError):
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


def _data_frame(data: dict[str, Any]) -> bytes:
    return b"data: " + encode(data) + b"\n\n"


class _Chat(msgspec.Struct, frozen=True):
    """Chat completions' `Format`, for one request: its completion, or its chunks, share one id."""

    request: _ChatRequest
    id: str = msgspec.field(default_factory=lambda: "chatcmpl-emu-" + secrets.token_hex(12))
    created: int = msgspec.field(default_factory=lambda: int(time.time()))

    @property
    def include_usage(self) -> bool:
        return self.request.stream_options is not None and self.request.stream_options.include_usage

    def error(self, fault: HTTPFault, headers: dict[str, str] | None) -> ChatError:
        status, kind, code, message = _CHAT_FAULTS[fault]
        return ChatError(status, kind, code, message, headers)

    def body(self, answer: Answer) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(answer.deltas), "refusal": None}
        if answer.tool:
            function = {"name": answer.tool, "arguments": answer.arguments()}
            message["tool_calls"] = [{"id": emulated_call_id(answer.prompt), "type": "function", "function": function}]
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": _FINISH_REASONS[answer.ending]}
        return {**self._base("chat.completion"), "choices": [choice], "usage": self._usage(answer)}

    def frames(self, answer: Answer) -> Frames:
        """The role chunk; the text deltas; then tool calls, finish, usage and ``[DONE]``."""
        head = [self._chunk({"role": "assistant", "content": ""})]
        deltas = [self._chunk({"content": text}) for text in answer.deltas]
        tail = []
        if answer.tool:
            opening = {"index": 0, "id": emulated_call_id(answer.prompt), "type": "function"}
            opening["function"] = {"name": answer.tool, "arguments": ""}
            tail.append(self._chunk({"tool_calls": [opening]}))
            for fragment in answer.argument_halves():
                tail.append(self._chunk({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]}))
        tail.append(self._chunk({}, _FINISH_REASONS[answer.ending]))
        if self.include_usage:
            usage = self._usage(answer)
            tail.append(_data_frame({**self._base("chat.completion.chunk"), "choices": [], "usage": usage}))
        tail.append(b"data: [DONE]\n\n")
        return head, deltas, tail

    def midstream_error(self) -> bytes:
        return _data_frame(_chat_error("server_error", "overloaded", "The server is overloaded"))

    def _usage(self, answer: Answer) -> dict[str, int]:
        prompt_tokens = input_tokens(message.content for message in self.request.messages)
        completion_tokens = answer.output_tokens
        total = prompt_tokens + completion_tokens
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": total}

    def _base(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.request.model}

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        chunk = {**self._base("chat.completion.chunk"), "choices": [choice]}
        if self.include_usage:
            chunk["usage"] = None  # as OpenAI sends it on every chunk but the last
        return _data_frame(chunk)


async def chat_completions(emulator: Emulator, request: Request) -> Response:
    emulator.stats.chat_completions += 1
    if emulator.api_key is not None and request.headers.get("authorization") != f"Bearer {emulator.api_key}":
        raise ChatError(401, "invalid_request_error", "invalid_api_key", "Incorrect API key provided")
    raw = await request.body()
    emulator.stats.bodies.append(raw)
    try:
        body = _chat_request_decoder.decode(raw)
        limit = body.max_completion_tokens or body.max_tokens
        steps = plan(_chat_prompt(body.messages), stream=body.stream, limit=limit, emulator=emulator)
    except (msgspec.DecodeError, BadDirective) as exc:
        raise ChatError(400, "invalid_request_error", None, str(exc)) from None
    return await respond(steps, _Chat(body))
