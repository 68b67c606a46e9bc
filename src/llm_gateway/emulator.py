"""A deterministic emulator of the Anthropic Messages API, of OpenAI's chat completions and of PiAPI's task API
(Trellis, image -> 3D), for tests, ``llm-gateway --demo`` and benchmarks.

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

PiAPI (``POST /api/v1/task``, ``GET /api/v1/task/{task_id}``, key in ``x-api-key``) is steered by an extra
``"emulator"`` object in the create body, which the gateway forwards untouched (PiAPI ignores unknown fields).
A task's status follows the time elapsed since its creation:

    pending_s=1.0       pending for this long, then
    staged=false        if true, "staged" for ``staged_s`` (default 1.0), then
    processing_s=2.0    "processing" for this long, then
    outcome             "completed" (output: `piapi_model_url` and friends) | "failed" (error.message "bad image")
    progress_steps=N    if N > 0, ``data.meta.progress`` rises 0..100 in N steps while processing (undocumented!)
    create_fault        "500" | "400" -> that status with a PiAPI body; "garbage" -> 200 ``<html>oops``;
                        "timeout" -> answer (and create the task) after ``timeout_s`` (default 30), unless the
                        client leaves first
    get_fault           "500" | "garbage" | "timeout", on the task's first ``get_fault_count`` GETs (default: all)
    webhook_on_finish   if true, POST the webhook when the task ends, whether or not anybody polls

- PiAPI documents neither its error bodies nor a progress field: errors here are ``{"code": status, "message":
  …, "data": null}``, and progress sits at ``data.meta.progress`` only when ``progress_steps`` asks for it.
- ``config.webhook_config.secret`` is blanked in task data, as in PiAPI's example response; the webhook still
  carries it in ``x-webhook-secret``.
- ``POST /_emulator/piapi/{task_id}/webhook`` sends a task's webhook now (``{"sent": true, "status": …}``).
  Timers for ``webhook_on_finish`` are owned by the app and cancelled by its lifespan: serve it with the lifespan
  on, or leave them to the event loop's end.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import logging
import random
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Annotated, Any, Literal

import httpx
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
    "piapi_model_url",
]

logger = logging.getLogger(__name__)

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
    """Requests received per upstream API, faulted ones included; and the last bodies, for tests to inspect.

    ``piapi_gets_by_task`` counts the GETs of each task id (unknown ones included); ``as_dict`` leaves it out.
    """

    messages: int = 0
    chat_completions: int = 0
    piapi_creates: int = 0
    piapi_gets: int = 0
    piapi_gets_by_task: dict[str, int] = dataclasses.field(default_factory=dict)
    bodies: collections.deque[bytes] = dataclasses.field(default_factory=lambda: collections.deque(maxlen=50))

    def reset(self) -> None:
        self.messages = 0
        self.chat_completions = 0
        self.piapi_creates = 0
        self.piapi_gets = 0
        self.piapi_gets_by_task.clear()
        self.bodies.clear()

    def as_dict(self) -> dict[str, int]:
        return {
            "messages": self.messages,
            "chat_completions": self.chat_completions,
            "piapi_creates": self.piapi_creates,
            "piapi_gets": self.piapi_gets,
        }


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


# --- PiAPI tasks (Trellis) --------------------------------------------------------------------------------

_UNSET_TIME = "0001-01-01T00:00:00Z"  # what PiAPI shows for a time not reached yet
_PIAPI_FILES = "https://img.theapi.app/temp/"


def piapi_model_url(task_id: str) -> str:
    """The GLB URL in ``output.model_file`` of a completed emulated task (not served by anything)."""
    return f"{_PIAPI_FILES}{task_id}/model.glb"


def _piapi_output(task_id: str) -> dict[str, str]:
    return {
        "model_file": piapi_model_url(task_id),
        "combined_video": f"{_PIAPI_FILES}{task_id}/combined_video.mp4",
        "no_background_image": f"{_PIAPI_FILES}{task_id}/no_background_image.png",
    }


class _PiapiOptions(msgspec.Struct, forbid_unknown_fields=True):
    """The ``"emulator"`` object of a create-task body: see the module docstring."""

    pending_s: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    staged: bool = False
    staged_s: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    processing_s: Annotated[float, msgspec.Meta(ge=0)] = 2.0
    outcome: Literal["completed", "failed"] = "completed"
    progress_steps: Annotated[int, msgspec.Meta(ge=0)] = 0
    create_fault: Literal["500", "400", "garbage", "timeout"] | None = None
    get_fault: Literal["500", "garbage", "timeout"] | None = None
    get_fault_count: Annotated[int, msgspec.Meta(ge=0)] | None = None
    timeout_s: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    webhook_on_finish: bool = False


class _WebhookConfig(msgspec.Struct):
    endpoint: str = ""
    secret: str = ""


class _TaskConfig(msgspec.Struct):
    service_mode: str = ""
    webhook_config: _WebhookConfig | None = None


class _TaskRequest(msgspec.Struct):
    model: str
    task_type: str
    input: dict[str, Any]
    config: _TaskConfig | None = None
    emulator: _PiapiOptions = msgspec.field(default_factory=_PiapiOptions)


_task_request_decoder = msgspec.json.Decoder(_TaskRequest)


class _PiapiError(Exception):
    """A PiAPI error response, ``{"code": status, "message": …, "data": null}`` (the shape is our guess)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _piapi_json(body: object, status: int = 200) -> Response:
    return Response(_encode(body), status, media_type="application/json")


def _piapi_error_response(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, _PiapiError)
    return _piapi_json({"code": exc.status, "message": exc.message, "data": None}, exc.status)


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


@dataclasses.dataclass
class _PiapiTask:
    """One task: its status is a pure function of the time elapsed since ``created`` (`data`)."""

    id: str
    request: _TaskRequest
    created_at: float = dataclasses.field(default_factory=time.time)
    created: float = dataclasses.field(default_factory=time.monotonic)
    gets: int = 0

    @property
    def options(self) -> _PiapiOptions:
        return self.request.emulator

    @property
    def starts_after(self) -> float:
        """Seconds from creation to "processing"."""
        return self.options.pending_s + (self.options.staged_s if self.options.staged else 0.0)

    @property
    def ends_after(self) -> float:
        return self.starts_after + self.options.processing_s

    @property
    def webhook(self) -> _WebhookConfig | None:
        config = self.request.config
        return config.webhook_config if config is not None else None

    def elapsed(self) -> float:
        return time.monotonic() - self.created

    def status(self, elapsed: float) -> str:
        if elapsed < self.options.pending_s:
            return "pending"
        if elapsed < self.starts_after:
            return "staged"
        if elapsed < self.ends_after:
            return "processing"
        return self.options.outcome

    def progress(self, elapsed: float) -> int:
        """0 until processing, then up in ``progress_steps`` steps: 0, 100/N, …, 100(N-1)/N; 100 once completed."""
        steps, status = self.options.progress_steps, self.status(elapsed)
        if status == "completed":
            return 100
        if status in ("pending", "staged"):
            return 0
        duration = self.options.processing_s
        fraction = (elapsed - self.starts_after) / duration if duration else 1.0
        return 100 * min(steps - 1, int(fraction * steps)) // steps

    def data(self, elapsed: float) -> dict[str, Any]:
        """The task's ``data`` as PiAPI's get-task answers it, ``elapsed`` seconds after creation."""
        status = self.status(elapsed)
        started = elapsed >= self.starts_after
        ended = elapsed >= self.ends_after
        meta: dict[str, Any] = {
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.created_at + self.starts_after) if started else _UNSET_TIME,
            "ended_at": _iso(self.created_at + self.ends_after) if ended else _UNSET_TIME,
            "usage": {"type": "llm", "frozen": 0, "consume": 400000},  # PiAPI's documented example
            "is_using_private_pool": False,
        }
        if self.options.progress_steps:
            # PiAPI documents no progress field (wire-formats §4, UNVERIFIED): this one is the emulator's own.
            meta["progress"] = self.progress(elapsed)
        error: dict[str, Any] = {"code": 0, "raw_message": "", "message": "", "detail": None}
        if status == "failed":
            error = {"code": 10000, "raw_message": "trellis failed: bad image", "message": "bad image", "detail": None}
        config = self.request.config or _TaskConfig()
        hook = config.webhook_config or _WebhookConfig()
        return {
            "task_id": self.id,
            "model": self.request.model,
            "task_type": self.request.task_type,
            "status": status,
            # The secret is blanked, as in PiAPI's example response to a request that had one.
            "config": {
                "service_mode": config.service_mode,
                "webhook_config": {"endpoint": hook.endpoint, "secret": ""},
            },
            "input": self.request.input,
            "output": _piapi_output(self.id) if status == "completed" else None,
            "meta": meta,
            "detail": None,
            "logs": [],
            "error": error,
        }


def _piapi_ok(data: dict[str, Any]) -> Response:
    return _piapi_json({"code": 200, "message": "success", "data": data})


def _garbage() -> Response:
    return Response(b"<html>oops", media_type="text/html")


async def _sleep_unless_disconnected(request: Request, seconds: float) -> bool:
    """Sleep ``seconds`` and return True, or return False as soon as the client leaves.

    A plain handler is not cancelled when its client goes (uvicorn, ASGI spec 2.3), so watch for the disconnect.
    The body must have been read: what ``receive`` gives next is the disconnect.
    """
    try:
        async with asyncio.timeout(seconds):
            await _until_disconnect(request.receive)
    except TimeoutError:
        return True
    return False


class _NoWebhook(Exception):
    pass


# --- the app ----------------------------------------------------------------------------------------------


class _Emulator:
    def __init__(self, *, deltas: int, delay: float, api_key: str | None) -> None:
        self.deltas = deltas
        self.delay = delay
        self.api_key = api_key
        self.stats = EmulatorStats()
        self.piapi_tasks: dict[str, _PiapiTask] = {}
        self.background: set[asyncio.Task[None]] = set()  # webhook_on_finish timers
        self.closed = False

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

    async def piapi_create(self, request: Request) -> Response:
        self.stats.piapi_creates += 1
        self._piapi_authenticate(request)
        raw = await request.body()
        self.stats.bodies.append(raw)
        try:
            body = _task_request_decoder.decode(raw)
        except msgspec.DecodeError as exc:
            raise _PiapiError(400, str(exc)) from None
        match body.emulator.create_fault:
            case "500":
                raise _PiapiError(500, "internal server error")
            case "400":
                raise _PiapiError(400, "invalid request")
            case "garbage":
                return _garbage()
            case "timeout":
                if not await _sleep_unless_disconnected(request, body.emulator.timeout_s):
                    return Response(status_code=499)  # nobody reads it: the client is gone
        task = _PiapiTask(str(uuid.uuid4()), body)
        self.piapi_tasks[task.id] = task
        if body.emulator.webhook_on_finish:
            self._spawn(self._webhook_on_finish(task))
        return _piapi_ok(task.data(0.0))

    async def piapi_get(self, request: Request) -> Response:
        task_id: str = request.path_params["task_id"]
        self.stats.piapi_gets += 1
        self.stats.piapi_gets_by_task[task_id] = self.stats.piapi_gets_by_task.get(task_id, 0) + 1
        self._piapi_authenticate(request)
        task = self._piapi_task(task_id)
        task.gets += 1
        options = task.options
        if options.get_fault is not None and (options.get_fault_count is None or task.gets <= options.get_fault_count):
            match options.get_fault:
                case "500":
                    raise _PiapiError(500, "internal server error")
                case "garbage":
                    return _garbage()
                case "timeout":
                    await request.body()  # a GET's (empty) body, so that what follows is the disconnect
                    if not await _sleep_unless_disconnected(request, options.timeout_s):
                        return Response(status_code=499)
        return _piapi_ok(task.data(task.elapsed()))

    async def piapi_webhook(self, request: Request) -> Response:
        """Test control: POST the task's webhook now, and say what its endpoint answered."""
        task = self._piapi_task(request.path_params["task_id"])
        try:
            status = await self._send_webhook(task)
        except _NoWebhook:
            return _piapi_json({"sent": False, "error": "the task has no config.webhook_config.endpoint"}, 400)
        except httpx.HTTPError as exc:
            return _piapi_json({"sent": False, "error": f"{type(exc).__name__}: {exc}"}, 502)
        return _piapi_json({"sent": True, "status": status})

    def _piapi_authenticate(self, request: Request) -> None:
        if self.api_key is not None and request.headers.get("x-api-key") != self.api_key:
            raise _PiapiError(401, "Unauthorized")

    def _piapi_task(self, task_id: str) -> _PiapiTask:
        task = self.piapi_tasks.get(task_id)
        if task is None:
            raise _PiapiError(404, "task not found")
        return task

    async def _send_webhook(self, task: _PiapiTask) -> int:
        hook = task.webhook
        if hook is None or not hook.endpoint:
            raise _NoWebhook
        headers = {"content-type": "application/json"}
        if hook.secret:
            headers["x-webhook-secret"] = hook.secret
        body = _encode({"timestamp": int(time.time()), "data": task.data(task.elapsed())})
        async with httpx.AsyncClient(timeout=5.0) as client:
            response = await client.post(hook.endpoint, content=body, headers=headers)
        return response.status_code

    async def _webhook_on_finish(self, task: _PiapiTask) -> None:
        await asyncio.sleep(max(0.0, task.ends_after - task.elapsed()))
        try:
            status = await self._send_webhook(task)
        except (_NoWebhook, httpx.HTTPError) as exc:
            logger.warning("emulated PiAPI webhook of task %s not sent: %r", task.id, exc)
        else:
            logger.debug("emulated PiAPI webhook of task %s: HTTP %d", task.id, status)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        if self.closed:
            coroutine.close()
            raise RuntimeError("the emulator is closed")
        task = asyncio.create_task(coroutine)
        self.background.add(task)
        task.add_done_callback(self._reap)

    def _reap(self, task: asyncio.Task[None]) -> None:
        self.background.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("emulator background task failed", exc_info=exc)

    async def aclose(self) -> None:
        """Cancel the webhook timers and wait for them; no more are started."""
        self.closed = True
        tasks = list(self.background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await self.aclose()

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
            Route("/api/v1/task", emulator.piapi_create, methods=["POST"]),
            Route("/api/v1/task/{task_id}", emulator.piapi_get),
            Route("/_emulator/stats", emulator.get_stats),
            Route("/_emulator/reset", emulator.reset, methods=["POST"]),
            Route("/_emulator/piapi/{task_id}/webhook", emulator.piapi_webhook, methods=["POST"]),
        ],
        exception_handlers={
            HTTPException: _error_response,
            _APIError: _error_response,
            _ChatError: _chat_error_response,
            _PiapiError: _piapi_error_response,
        },
        lifespan=emulator.lifespan,
    )
    app.state.stats = emulator.stats
    app.state.background_tasks = emulator.background
    return app
