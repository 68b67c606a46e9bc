"""The Anthropic Messages API, ``POST /v1/messages``: its request, its message and SSE frames, its errors; and
``POST /v1/messages/count_tokens``.

- The key goes in ``x-api-key`` or ``Authorization: Bearer``.
- ``tool=NAME`` adds a tool_use block `emulated_tool_id` after the text; when ``max_tokens`` cuts the text short,
  none follows (stop_reason ``max_tokens``).
- The text ends before the first of the request's ``stop_sequences`` it holds (stop_reason ``stop_sequence``, no
  tool call then).
- count_tokens answers the ``input_tokens`` a message with the same system and messages reports (`input_tokens`),
  or the prompt's HTTP fault.
- Errors are ``{"type": "error", "error": {type, message}, "request_id"}``, the app's 404 and 405 included.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from .answer import Answer, Ending, input_tokens, texts
from .plan import BadDirective, HTTPFault, plan
from .state import Emulator
from .stream import Frames, UpstreamError, encode, json_response, request_id, respond
from .words import emulated_tool_id, emulated_tool_input


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
    stop_sequences: list[str] | None = None


class _CountRequest(msgspec.Struct):
    model: str
    messages: Annotated[list[_Message], msgspec.Meta(min_length=1)]
    system: str | list[dict[str, Any]] | None = None


_request_decoder = msgspec.json.Decoder(_Request)
_count_decoder = msgspec.json.Decoder(_CountRequest)

_HTTP_FAULTS: dict[HTTPFault, tuple[int, str, str]] = {
    "401": (401, "authentication_error", "invalid x-api-key"),
    "429": (429, "rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit"),
    "500": (500, "api_error", "Internal server error"),
    "529": (529, "overloaded_error", "Overloaded"),
}
_ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}
_STOP_REASONS: dict[Ending, str] = {"truncated": "max_tokens", "tool": "tool_use", "done": "end_turn"}


class APIError(UpstreamError):
    """An Anthropic error response: `error_response` renders it."""


def error_response(request: Request, exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        status = exc.status_code
        kind = _ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
        exc = APIError(status, kind, exc.detail)
    assert isinstance(exc, APIError)
    headers = {"request-id": request_id(), **exc.headers}
    body = {"type": "error", "error": {"type": exc.type, "message": exc.message}, "request_id": headers["request-id"]}
    return Response(encode(body), exc.status, headers, media_type="application/json")


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


def _frame(data: dict[str, Any]) -> bytes:
    event: str = data["type"]
    return b"event: " + event.encode() + b"\ndata: " + encode(data) + b"\n\n"


def _http_error(fault: HTTPFault, headers: dict[str, str] | None) -> APIError:
    status, kind, message = _HTTP_FAULTS[fault]
    return APIError(status, kind, message, headers)


def _stopped(answer: Answer, stop_sequences: list[str] | None) -> tuple[Answer, str | None]:
    """``answer`` cut before the first of ``stop_sequences`` in its text (no tool call then), and that sequence."""
    text = "".join(answer.deltas)
    found = [(text.find(sequence), sequence) for sequence in stop_sequences or () if sequence and sequence in text]
    if not found:
        return answer, None
    at, sequence = min(found)
    deltas: list[str] = []
    for delta in answer.deltas:
        if len(delta) >= at:
            deltas.extend([delta[:at]] if at else [])
            break
        deltas.append(delta)
        at -= len(delta)
    return msgspec.structs.replace(answer, deltas=deltas, tool=None, ending="done"), sequence


def _tool_block(answer: Answer, tool_input: dict[str, str]) -> dict[str, Any]:
    return {"type": "tool_use", "id": emulated_tool_id(answer.prompt), "name": answer.tool, "input": tool_input}


class _Messages(msgspec.Struct, frozen=True):
    """The Messages API's `Format`, for one request."""

    request: _Request

    def error(self, fault: HTTPFault, headers: dict[str, str] | None) -> APIError:
        return _http_error(fault, headers)

    def body(self, answer: Answer) -> dict[str, Any]:
        answer, sequence = _stopped(answer, self.request.stop_sequences)
        content: list[dict[str, Any]] = [{"type": "text", "text": "".join(answer.deltas)}]
        if answer.tool:
            content.append(_tool_block(answer, emulated_tool_input(answer.prompt)))
        return self._message(content, _stop_reason(answer, sequence), answer.output_tokens, sequence)

    def frames(self, answer: Answer) -> Frames:
        answer, sequence = _stopped(answer, self.request.stop_sequences)
        head = [
            _frame({"type": "message_start", "message": self._message([], None, 1)}),
            _frame({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            _frame({"type": "ping"}),
        ]
        deltas = [
            _frame({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}})
            for text in answer.deltas
        ]
        tail = [_frame({"type": "content_block_stop", "index": 0})]
        if answer.tool:
            tail.append(_frame({"type": "content_block_start", "index": 1, "content_block": _tool_block(answer, {})}))
            for fragment in ("", *answer.argument_halves()):
                delta = {"type": "input_json_delta", "partial_json": fragment}
                tail.append(_frame({"type": "content_block_delta", "index": 1, "delta": delta}))
            tail.append(_frame({"type": "content_block_stop", "index": 1}))
        stop: dict[str, Any] = {"stop_reason": _stop_reason(answer, sequence), "stop_sequence": sequence}
        usage = {"output_tokens": answer.output_tokens}
        tail.append(_frame({"type": "message_delta", "delta": stop, "usage": usage}))
        tail.append(_frame({"type": "message_stop"}))
        return head, deltas, tail

    def midstream_error(self) -> bytes:
        return _frame({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})

    def _message(
        self, content: list[dict[str, Any]], stop_reason: str | None, output_tokens: int, sequence: str | None = None
    ) -> dict[str, Any]:
        request = self.request
        return {
            "id": "msg_emu_" + secrets.token_hex(12),
            "type": "message",
            "role": "assistant",
            "model": request.model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": sequence,
            "usage": {
                "input_tokens": _input_tokens(request),
                "output_tokens": output_tokens,
            },
        }


def _stop_reason(answer: Answer, sequence: str | None) -> str:
    return "stop_sequence" if sequence is not None else _STOP_REASONS[answer.ending]


def _input_tokens(request: _Request | _CountRequest) -> int:
    return input_tokens([request.system, *(message.content for message in request.messages)])


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
        steps = plan(_prompt(body.messages), stream=body.stream, limit=body.max_tokens, emulator=emulator)
    except (msgspec.DecodeError, BadDirective) as exc:
        raise APIError(400, "invalid_request_error", str(exc)) from None
    return await respond(steps, _Messages(body))


async def count_tokens(emulator: Emulator, request: Request) -> Response:
    _authenticate(request, emulator.api_key)
    raw = await request.body()
    emulator.stats.bodies.append(raw)
    try:
        body = _count_decoder.decode(raw)
        steps = plan(_prompt(body.messages), stream=False, limit=None, emulator=emulator)
    except (msgspec.DecodeError, BadDirective) as exc:
        raise APIError(400, "invalid_request_error", str(exc)) from None
    if (fault := steps.http_fault) is not None:
        raise _http_error(fault, {"retry-after": str(steps.retry_after)} if fault == "429" else None)
    return json_response({"input_tokens": _input_tokens(body)})
