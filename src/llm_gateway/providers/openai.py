"""OpenAI-compatible chat completions (OpenAI, Cerebras, Gemini) over httpx: Anthropic-format requests in, events out.

The request is converted by pure functions (`openai_body`), the stream is mapped by a pure `ChunkMapper`
(wire-formats §2); only `OpenAICompatibleProvider` touches the network. Choices a reader may not expect:

- Tool-call fragments are keyed by ``index``, but providers omit or reuse it (wire-formats §7): a fragment
  with an id never seen opens a new call even at a used index; one with neither index nor id continues
  the latest call.
- ``finish_reason: "stop"`` after tool calls (Gemini says so) becomes ``tool_use``.
- An HTTP error's status decides our error type; an in-stream error's type/code/status strings do.
- Only the request is retried, never a started stream: the client has already seen its first events.
- After ``[DONE]`` the body is still read to its end so the connection can be reused; a failure then is moot.
"""

from __future__ import annotations

import asyncio
import random
import re
import secrets
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import httpx
import msgspec

from ..errors import GatewayError, InvalidRequest
from ..events import Complete, Event, Text, TokenUsage, ToolCall, Usage
from .anthropic_wire import SSEDecoder
from .base import GenerationRequest, error_from_upstream, parse_retry_after

__all__ = [
    "ChunkMapper",
    "OpenAICompatibleProvider",
    "error_in_body",
    "openai_body",
    "openai_messages",
    "openai_tool_choice",
    "openai_tools",
    "retry_delay",
    "upstream_error",
]

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
MAX_RETRY_AFTER = 60.0
MAX_ERROR_BODY = 64 * 1024
_RETRY_STATUSES = frozenset({408, 409, 429})
_RETRY_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError)
_SECRET = re.compile(r"\b(?:sk-|AIza)[\w*.-]{6,}")  # keys echoed (masked or not) in upstream messages

_encode = msgspec.json.Encoder().encode


# --- the request: Anthropic format -> OpenAI's --------------------------------------------------------------


def openai_body(request: GenerationRequest, *, max_tokens_field: str = "max_tokens") -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": request.model,
        "messages": openai_messages(request),
        "stream": True,
        "stream_options": {"include_usage": True},
        max_tokens_field: request.max_tokens,
    }
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.tools:
        body["tools"] = openai_tools(request.tools)
        if request.tool_choice:
            if (choice := openai_tool_choice(request.tool_choice)) is not None:
                body["tool_choice"] = choice
            if request.tool_choice.get("disable_parallel_tool_use"):
                body["parallel_tool_calls"] = False
    return body


def openai_messages(request: GenerationRequest) -> list[dict[str, Any]]:
    """The system prompt first, then each turn; a user turn's tool results become ``tool`` messages before it."""
    messages: list[dict[str, Any]] = []
    system = request.system if isinstance(request.system, str) else "".join(_texts(request.system or []))
    if system:
        messages.append({"role": "system", "content": system})
    for message in request.messages:
        content = message.get("content")
        if message.get("role") == "assistant":
            messages.append(_assistant_message(content))
        else:
            messages.extend(_user_messages(content))
    return messages


def openai_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    converted = []
    for tool in tools:
        function: dict[str, Any] = {"name": tool.get("name", "")}
        if tool.get("description"):
            function["description"] = tool["description"]
        function["parameters"] = tool.get("input_schema") or {"type": "object", "properties": {}}
        converted.append({"type": "function", "function": function})
    return converted


def openai_tool_choice(choice: Mapping[str, Any]) -> str | dict[str, Any] | None:
    match choice.get("type"):
        case "auto":
            return "auto"
        case "any":
            return "required"
        case "none":
            return "none"
        case "tool":
            return {"type": "function", "function": {"name": choice.get("name", "")}}
    return None


def _texts(blocks: list[dict[str, Any]]) -> list[str]:
    return [str(block.get("text", "")) for block in blocks if block.get("type") == "text"]


def _user_messages(content: object) -> list[dict[str, Any]]:
    if not isinstance(content, list):
        return [{"role": "user", "content": content if isinstance(content, str) else ""}]
    results = [block for block in content if block.get("type") == "tool_result"]
    messages: list[dict[str, Any]] = [
        {"role": "tool", "tool_call_id": str(block.get("tool_use_id", "")), "content": _tool_result(block)}
        for block in results
    ]
    parts = [_part(block) for block in content if block.get("type") != "tool_result"]
    if len(parts) == 1 and parts[0]["type"] == "text":
        messages.append({"role": "user", "content": parts[0]["text"]})
    elif parts or not results:
        messages.append({"role": "user", "content": parts or ""})
    return messages


def _part(block: dict[str, Any]) -> dict[str, Any]:
    kind = block.get("type")
    if kind == "text":
        return {"type": "text", "text": str(block.get("text", ""))}
    if kind == "image":
        source = block.get("source") or {}
        if source.get("type") == "url":
            return {"type": "image_url", "image_url": {"url": source.get("url", "")}}
        if source.get("type") == "base64":
            url = f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
            return {"type": "image_url", "image_url": {"url": url}}
    raise InvalidRequest(f"content block {kind!r} is not supported by OpenAI-compatible models")


def _tool_result(block: dict[str, Any]) -> str:
    content = block.get("content")
    # OpenAI's tool messages hold text only: images in a result are left out.
    text = content if isinstance(content, str) else "\n".join(_texts(content or []))
    return f"Error: {text}" if block.get("is_error") else text


def _assistant_message(content: object) -> dict[str, Any]:
    if not isinstance(content, list):
        return {"role": "assistant", "content": content if isinstance(content, str) else ""}
    calls = []
    for block in content:
        kind = block.get("type")
        if kind == "tool_use":
            arguments = _encode(block.get("input") or {}).decode()
            function = {"name": str(block.get("name", "")), "arguments": arguments}
            calls.append({"id": str(block.get("id", "")), "type": "function", "function": function})
        elif kind not in ("text", "thinking", "redacted_thinking"):  # thinking is the model's own: not sent back
            raise InvalidRequest(f"assistant content block {kind!r} is not supported by OpenAI-compatible models")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(_texts(content)) or (None if calls else "")}
    if calls:
        message["tool_calls"] = calls
    return message


# --- the stream: OpenAI's chunks -> our events ----------------------------------------------------------------


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
    return error_from_upstream(status, kind, _SECRET.sub("[redacted]", wire.message) or None, retry_after)


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


# --- the client -----------------------------------------------------------------------------------------------


def retry_delay(attempt: int, headers: Mapping[str, str]) -> float:
    """Seconds before retry ``attempt`` (0-based): the upstream's ask up to a minute, else jittered backoff."""
    try:
        ms = headers.get("retry-after-ms")
        seconds = float(ms) / 1000 if ms else parse_retry_after(headers.get("retry-after"))
    except (TypeError, ValueError):
        seconds = None
    if seconds is not None and 0 <= seconds <= MAX_RETRY_AFTER:
        return seconds
    return min(0.5 * 2.0**attempt, 8.0) * (1 - 0.25 * random.random())


class OpenAICompatibleProvider:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        idle_timeout: float,
        max_retries: int,
        client: httpx.AsyncClient | None = None,
        max_tokens_field: str = "max_tokens",
    ) -> None:
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._headers = {"authorization": f"Bearer {api_key}", "accept": "text/event-stream"}
        self._max_retries = max_retries
        self._max_tokens_field = max_tokens_field
        self._owns_client = client is None
        # The read timeout is the idle timeout: it bounds the silence between two chunks of the stream.
        timeout = httpx.Timeout(connect=10.0, read=idle_timeout, write=30.0, pool=30.0)
        # No connection cap of our own: MAX_CONCURRENT_TASKS bounds the streams.
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=100)
        self._client = client or httpx.AsyncClient(timeout=timeout, limits=limits)

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Event]:
        body = _encode(openai_body(request, max_tokens_field=self._max_tokens_field))
        mapper = ChunkMapper(request.model)
        try:
            response = await self._send(body)
            try:
                if response.headers.get("content-type", "").startswith("application/json"):
                    # Not a stream: an error (possibly Gemini's array) sent with a 200.
                    raise upstream_error(error_in_body(await _read_capped(response)) or "not an event stream", 200)
                decoder = SSEDecoder()
                try:
                    async for chunk in response.aiter_bytes():
                        for event in mapper.feed(decoder.feed(chunk)):
                            yield event
                    for event in mapper.feed(decoder.finish()):
                        yield event
                except httpx.TransportError:
                    if not mapper.done:
                        raise
            finally:
                await response.aclose()
        except httpx.TimeoutException:
            raise GatewayError("upstream_timeout", "upstream sent nothing within UPSTREAM_IDLE_TIMEOUT") from None
        except httpx.HTTPError as exc:
            raise GatewayError("upstream_error", f"upstream connection failed: {type(exc).__name__}") from None
        yield mapper.complete()

    async def _send(self, body: bytes) -> httpx.Response:
        """The response to a successful request, retried on connection failures and 408/409/429/5xx."""
        attempt = 0
        while True:
            request = self._client.build_request("POST", self._url, content=body, headers=self._headers)
            request.headers["content-type"] = "application/json"
            try:
                response = await self._client.send(request, stream=True)
            except _RETRY_ERRORS:
                if attempt >= self._max_retries:
                    raise
                await asyncio.sleep(retry_delay(attempt, {}))
                attempt += 1
                continue
            if response.is_success:
                return response
            try:
                raw = await _read_capped(response)
            finally:
                await response.aclose()
            status = response.status_code
            if attempt < self._max_retries and (status in _RETRY_STATUSES or status >= 500):
                await asyncio.sleep(retry_delay(attempt, response.headers))
                attempt += 1
                continue
            error = error_in_body(raw) or raw[:200].decode("utf-8", "replace") or response.reason_phrase
            raise upstream_error(error, status, response.headers.get("retry-after"))


async def _read_capped(response: httpx.Response) -> bytes:
    data = b""
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) >= MAX_ERROR_BODY:
            break
    return data[:MAX_ERROR_BODY]
