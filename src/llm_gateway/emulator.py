"""A deterministic emulator of the Anthropic Messages API and of OpenAI's chat completions, for tests,
``llm-gateway --demo`` and benchmarks.

The answer to a request is derived from the text of its last user message (the *prompt*): the same prompt
always yields the same words (`emulated_deltas`), through either API. A test steers the emulator with
directives anywhere in that text, e.g. ``hello [emu:deltas=10] [emu:fault=529]``:

    deltas=N        number of text deltas (default: the app's ``deltas``)
    delay_ms=N      pause between deltas (default: the app's ``delay``); a non-streaming
                    request sleeps, once per delta, only when this directive is given
    fault=F         401 | 429 | 500 | 529 -> that HTTP error, streaming or not;
                    error_midstream | drop | stall -> after ``after`` deltas (default 3) send an
                    ``event: error``, cut the connection, or go silent until the client leaves
    after=N         see ``fault``
    retry_after=N   ``retry-after`` header of fault=429 (default 1)
    tool=NAME       answer with a tool_use block after the text (`emulated_tool_input`); on
                    chat completions, a tool call `emulated_call_id` whose arguments come in two fragments

Choices a reader may not expect:

- Directives are part of the prompt: they are hashed with it and never stripped from it.
- When ``max_tokens`` cuts the text short, no tool_use block follows (stop_reason ``max_tokens``).
- Without ``stream``, ``error_midstream`` is a 529 (what the real API answers then); ``drop`` and
  ``stall`` send the headers, then cut the connection or go silent.
- Streams are raw ASGI rather than `StreamingResponse`, so that ``drop`` can end a response
  half-way: uvicorn closes the socket when an app returns mid-body (and logs one line).
- The ``/_emulator/*`` routes need no API key.
- ``POST /v1/chat/completions`` answers in OpenAI's shapes: errors ``{"error": {message, type, param, code}}``,
  fault 529 as a 503, ``error_midstream`` as a ``data: {"error": …}`` frame, the key as ``Authorization:
  Bearer`` only. A conversation ending in ``tool`` messages has their contents as its prompt, which is what
  the Messages side makes of the same turn (tool results only). ``max_completion_tokens`` or ``max_tokens``
  cut the text (``finish_reason: "length"``).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import random
import re
import secrets
import time
from collections.abc import Iterator
from typing import Annotated, Any, Literal

import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

__all__ = [
    "EmulatorStats",
    "create_emulator_app",
    "emulated_call_id",
    "emulated_deltas",
    "emulated_text",
    "emulated_tool_id",
    "emulated_tool_input",
]

_VOCABULARY = (
    "the", "a", "river", "stone", "light", "quiet", "garden", "over", "under", "bright",
    "morning", "evening", "city", "road", "small", "large", "green", "blue", "old", "new",
    "window", "table", "music", "paper", "letter", "story", "cloud", "rain", "sun", "wind",
    "and", "with", "from", "into", "near", "far", "slowly", "quickly", "always", "never",
    "house", "bridge", "forest", "mountain", "ocean", "field", "friend", "teacher", "child", "dog",
    "walks", "reads", "sings", "builds", "finds", "keeps", "opens", "turns", "café", "naïve",
    "日本", "warm", "cold", "simple",
)  # fmt: skip

_DIRECTIVE = re.compile(r"\[emu:(\w+)=([^\]]*)\]")
_STALL_SECONDS = 3600.0
_SSE = "text/event-stream"


@dataclasses.dataclass
class EmulatorStats:
    """Requests received per upstream API, faulted ones included; and the last bodies, for tests to inspect."""

    messages: int = 0
    chat_completions: int = 0
    bodies: collections.deque[bytes] = dataclasses.field(default_factory=lambda: collections.deque(maxlen=50))

    def reset(self) -> None:
        self.messages = 0
        self.chat_completions = 0
        self.bodies.clear()

    def as_dict(self) -> dict[str, int]:
        return {"messages": self.messages, "chat_completions": self.chat_completions}


def emulated_deltas(prompt: str, n: int) -> list[str]:
    """The ``n`` text deltas answering ``prompt``: words, a sentence break every 12th, a final full stop."""
    rng = random.Random(int.from_bytes(hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).digest(), "big"))
    words = rng.choices(_VOCABULARY, k=n)
    deltas = [word + (".\n" if i % 12 == 0 else " ") for i, word in enumerate(words, 1)]
    if deltas:
        deltas[-1] = words[-1] + "."
    return deltas


def emulated_text(prompt: str, n: int) -> str:
    return "".join(emulated_deltas(prompt, n))


def emulated_tool_id(prompt: str) -> str:
    return "toolu_emu_" + hashlib.sha256(b"tool:" + prompt.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def emulated_call_id(prompt: str) -> str:
    """The id of the tool call a chat completion answers ``prompt`` with (OpenAI's ids start ``call_``)."""
    return "call_emu_" + emulated_tool_id(prompt).removeprefix("toolu_emu_")


def emulated_tool_input(prompt: str) -> dict[str, str]:
    return {"query": _DIRECTIVE.sub("", prompt).strip()[:20]}


# --- wire types -------------------------------------------------------------------------------------------


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
_encode = msgspec.json.Encoder().encode

_HTTP_FAULTS = {
    "401": (401, "authentication_error", "invalid x-api-key"),
    "429": (429, "rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit"),
    "500": (500, "api_error", "Internal server error"),
    "529": (529, "overloaded_error", "Overloaded"),
}
_ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}


class _APIError(Exception):
    """An Anthropic error response: ``_error_response`` renders it."""

    def __init__(self, status: int, error_type: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type = error_type
        self.message = message
        self.headers = headers or {}


def _request_id() -> str:
    return "req_emu_" + secrets.token_hex(12)


def _json(data: object) -> Response:
    return Response(_encode(data), headers={"request-id": _request_id()}, media_type="application/json")


def _error_response(request: Request, exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        status = exc.status_code
        kind = _ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
        exc = _APIError(status, kind, exc.detail)
    assert isinstance(exc, _APIError)
    headers = {"request-id": _request_id(), **exc.headers}
    body = {"type": "error", "error": {"type": exc.type, "message": exc.message}, "request_id": headers["request-id"]}
    return Response(_encode(body), exc.status, headers, media_type="application/json")


# --- the answer -------------------------------------------------------------------------------------------


def _texts(content: object) -> Iterator[str]:
    """Every text in a system prompt or message content, tool results' contents included."""
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for block in content:
            if isinstance(block, dict):
                if isinstance(text := block.get("text"), str):
                    yield text
                yield from _texts(block.get("content"))


def _prompt(messages: list[_Message]) -> str:
    """The text of the last user message: its text blocks or, failing those, its tool results."""
    for message in reversed(messages):
        if message.role != "user":
            continue
        if isinstance(message.content, str):
            return message.content
        texts = [block.get("text") for block in message.content if block.get("type") == "text"]
        if texts:
            return "".join(text for text in texts if isinstance(text, str))
        return "".join(_texts([block for block in message.content if block.get("type") == "tool_result"]))
    return ""


def _directives(prompt: str) -> _Directives:
    try:
        return msgspec.convert(dict(_DIRECTIVE.findall(prompt)), _Directives, strict=False)
    except msgspec.ValidationError as exc:
        raise _APIError(400, "invalid_request_error", f"bad emulator directive: {exc}") from None


@dataclasses.dataclass
class _Answer:
    request: _Request
    prompt: str
    deltas: list[str]
    tool: str | None
    stop_reason: str

    @property
    def input_tokens(self) -> int:
        chars = sum(len(text) for text in _texts(self.request.system))
        chars += sum(len(text) for message in self.request.messages for text in _texts(message.content))
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
            arguments = _encode(emulated_tool_input(self.prompt)).decode()
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
    return b"event: " + event.encode() + b"\ndata: " + _encode(data) + b"\n\n"


class _Stream(Response):
    """Sends ``head``, then ``deltas`` with pauses, then ``tail``, or ends early (``end``) to emulate a fault."""

    def __init__(
        self,
        head: list[bytes],
        deltas: list[bytes],
        tail: list[bytes],
        *,
        media_type: str,
        delay: float,
        end: Literal["complete", "drop", "stall"] = "complete",
    ) -> None:
        self.status_code = 200
        self.media_type = media_type
        self.background = None
        self.init_headers({"cache-control": "no-cache", "request-id": _request_id()})
        self.head, self.deltas, self.tail = head, deltas, tail
        self.delay = delay
        self.end = end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # uvicorn (ASGI spec 2.3) silently drops what is sent to a client that left, so watch for the
        # disconnect and stop then; otherwise a stall or a slow stream would run on for nothing.
        async with asyncio.TaskGroup() as group:
            watcher = group.create_task(_until_disconnect(receive))
            sender = group.create_task(self._send(send))
            sender.add_done_callback(lambda _: watcher.cancel())
            watcher.add_done_callback(lambda _: sender.cancel())

    async def _send(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        for chunk in self.head:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        for i, chunk in enumerate(self.deltas):
            if i:
                await asyncio.sleep(self.delay)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if self.end == "stall":
            await asyncio.sleep(_STALL_SECONDS)
        if self.end != "complete":
            return  # mid-body: uvicorn closes the connection, and the client sees a truncated chunked body
        *rest, last = self.tail
        for chunk in rest:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": last, "more_body": False})


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


# --- OpenAI chat completions ------------------------------------------------------------------------------


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


class _ChatError(_APIError):
    """An OpenAI error response: ``_chat_error_response`` renders it."""

    def __init__(
        self, status: int, error_type: str, code: str | None, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status, error_type, message, headers)
        self.code = code


def _chat_error(error_type: str, code: str | None, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}


def _chat_error_response(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, _ChatError)
    headers = {"x-request-id": _request_id(), **exc.headers}
    body = _chat_error(exc.type, exc.code, exc.message)
    return Response(_encode(body), exc.status, headers, media_type="application/json")


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
        chars = sum(len(text) for message in self.request.messages for text in _texts(message.content))
        prompt_tokens, completion_tokens = max(1, chars // 4), len(self.deltas) + (3 if self.tool else 0)
        total = prompt_tokens + completion_tokens
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": total}

    @property
    def include_usage(self) -> bool:
        return self.request.stream_options is not None and self.request.stream_options.include_usage

    def completion(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.deltas), "refusal": None}
        if self.tool:
            arguments = _encode(emulated_tool_input(self.prompt)).decode()
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
            arguments = _encode(emulated_tool_input(self.prompt)).decode()
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
    return b"data: " + _encode(data) + b"\n\n"


# --- the app ----------------------------------------------------------------------------------------------


class _Emulator:
    def __init__(self, *, deltas: int, delay: float, api_key: str | None) -> None:
        self.deltas = deltas
        self.delay = delay
        self.api_key = api_key
        self.stats = EmulatorStats()

    async def messages(self, request: Request) -> Response:
        self.stats.messages += 1
        self._authenticate(request)
        raw = await request.body()
        self.stats.bodies.append(raw)
        try:
            body = _request_decoder.decode(raw)
        except msgspec.DecodeError as exc:
            raise _APIError(400, "invalid_request_error", str(exc)) from None
        prompt = _prompt(body.messages)
        directives = _directives(prompt)
        fault = directives.fault
        if fault == "error_midstream" and not body.stream:
            fault = "529"  # what the real API answers a non-streaming request when overloaded
        if fault in _HTTP_FAULTS:
            status, kind, message = _HTTP_FAULTS[fault]
            headers = {"retry-after": str(directives.retry_after)} if status == 429 else None
            raise _APIError(status, kind, message, headers)

        n = self.deltas if directives.deltas is None else directives.deltas
        delay = self.delay if directives.delay_ms is None else directives.delay_ms / 1000
        deltas = emulated_deltas(prompt, n)[: body.max_tokens]
        truncated = len(deltas) < n
        tool = None if truncated else directives.tool
        stop_reason = "max_tokens" if truncated else "tool_use" if tool else "end_turn"
        answer = _Answer(body, prompt, deltas, tool, stop_reason)

        if not body.stream:
            if fault == "drop" or fault == "stall":
                return _Stream([], [], [], media_type="application/json", delay=0, end=fault)
            if directives.delay_ms is not None:
                await asyncio.sleep(delay * len(deltas))
            return _json(answer.message())

        head, delta_frames, tail = answer.frames()
        match fault:
            case "error_midstream":
                error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
                return _Stream(head, delta_frames[: directives.after], [_frame(error)], media_type=_SSE, delay=delay)
            case "drop" | "stall":
                delta_frames = delta_frames[: directives.after]
                return _Stream(head, delta_frames, [], media_type=_SSE, delay=delay, end=fault)
        return _Stream(head, delta_frames, tail, media_type=_SSE, delay=delay)

    async def chat_completions(self, request: Request) -> Response:
        self.stats.chat_completions += 1
        if self.api_key is not None and request.headers.get("authorization") != f"Bearer {self.api_key}":
            raise _ChatError(401, "invalid_request_error", "invalid_api_key", "Incorrect API key provided")
        raw = await request.body()
        self.stats.bodies.append(raw)
        try:
            body = _chat_request_decoder.decode(raw)
            prompt = _chat_prompt(body.messages)
            directives = _directives(prompt)
        except msgspec.DecodeError as exc:
            raise _ChatError(400, "invalid_request_error", None, str(exc)) from None
        except _APIError as exc:
            raise _ChatError(exc.status, exc.type, None, exc.message) from None
        fault = directives.fault
        if fault == "error_midstream" and not body.stream:
            fault = "529"
        if fault in _CHAT_FAULTS:
            status, kind, code, message = _CHAT_FAULTS[fault]
            headers = {"retry-after": str(directives.retry_after)} if status == 429 else None
            raise _ChatError(status, kind, code, message, headers)

        n = self.deltas if directives.deltas is None else directives.deltas
        delay = self.delay if directives.delay_ms is None else directives.delay_ms / 1000
        limit = body.max_completion_tokens or body.max_tokens
        deltas = emulated_deltas(prompt, n)[:limit]
        truncated = len(deltas) < n
        tool = None if truncated else directives.tool
        answer = _ChatAnswer(body, prompt, deltas, tool, "length" if truncated else "tool_calls" if tool else "stop")

        if not body.stream:
            if fault == "drop" or fault == "stall":
                return _Stream([], [], [], media_type="application/json", delay=0, end=fault)
            if directives.delay_ms is not None:
                await asyncio.sleep(delay * len(deltas))
            return _json(answer.completion())

        head, delta_frames, tail = answer.frames()
        match fault:
            case "error_midstream":
                error = _data_frame(_chat_error("server_error", "overloaded", "The server is overloaded"))
                return _Stream(head, delta_frames[: directives.after], [error], media_type=_SSE, delay=delay)
            case "drop" | "stall":
                delta_frames = delta_frames[: directives.after]
                return _Stream(head, delta_frames, [], media_type=_SSE, delay=delay, end=fault)
        return _Stream(head, delta_frames, tail, media_type=_SSE, delay=delay)

    def _authenticate(self, request: Request) -> None:
        if self.api_key is None:
            return
        headers = request.headers
        if headers.get("x-api-key") != self.api_key and headers.get("authorization") != f"Bearer {self.api_key}":
            raise _APIError(401, "authentication_error", "invalid x-api-key")

    async def index(self, request: Request) -> Response:
        return _json({"name": "llm-gateway emulator"})

    async def get_stats(self, request: Request) -> Response:
        return _json(self.stats.as_dict())

    async def reset(self, request: Request) -> Response:
        self.stats.reset()
        return _json(self.stats.as_dict())


def create_emulator_app(*, deltas: int = 50, delay: float = 0.0, api_key: str | None = None) -> Starlette:
    emulator = _Emulator(deltas=deltas, delay=delay, api_key=api_key)
    app = Starlette(
        routes=[
            Route("/", emulator.index),
            Route("/v1/messages", emulator.messages, methods=["POST"]),
            Route("/v1/chat/completions", emulator.chat_completions, methods=["POST"]),
            Route("/_emulator/stats", emulator.get_stats),
            Route("/_emulator/reset", emulator.reset, methods=["POST"]),
        ],
        exception_handlers={
            HTTPException: _error_response,
            _APIError: _error_response,
            _ChatError: _chat_error_response,
        },
    )
    app.state.stats = emulator.stats
    return app
