"""What every provider takes and gives, and the one mapping of upstream failures to our error types."""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar, runtime_checkable

import msgspec

from ..aio import raise_if_cancelling
from ..content import Message, TextBlock
from ..errors import ErrorType, GatewayError
from ..events import Event
from ..redact import scrub


class GenerationRequest(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A provider-neutral request, in the Anthropic message format."""

    model: str
    messages: list[Message]
    max_tokens: int = 4096
    system: str | list[TextBlock] | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop_sequences: list[str] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    top_k: int | None = None
    thinking: dict[str, Any] | None = None


class Provider(Protocol):
    def stream(self, request: GenerationRequest) -> AsyncIterator[Event]:
        """Yield ``text``/``tool_call``/``usage`` events and finally one ``complete``; raise GatewayError."""

    async def close(self) -> None: ...


@runtime_checkable
class TokenCounter(Protocol):
    """A provider that can count a request's input tokens (Claude's ``count_tokens``)."""

    async def count_tokens(self, request: GenerationRequest) -> int: ...


_TYPE_BY_UPSTREAM_TYPE: dict[str, ErrorType] = {
    "authentication_error": "upstream_auth",
    "permission_error": "upstream_auth",
    "billing_error": "upstream_auth",
    "rate_limit_error": "upstream_rate_limited",
    "overloaded_error": "upstream_overloaded",
    "timeout_error": "upstream_timeout",
    "invalid_request_error": "invalid_request",
    "not_found_error": "invalid_request",
    "request_too_large": "invalid_request",
    "api_error": "upstream_error",
}


def _type_for_status(status: int) -> ErrorType:
    if status in (401, 402, 403):
        return "upstream_auth"
    if status == 429:
        return "upstream_rate_limited"
    if status in (503, 529):
        return "upstream_overloaded"
    if status in (408, 504):
        return "upstream_timeout"
    if 400 <= status < 500:
        return "invalid_request"
    return "upstream_error"


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: a number, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value.strip() else None
        return None if parsed is None else max(0.0, parsed.timestamp() - time.time())


def error_from_upstream(
    status: int, upstream_type: str | None, message: str | None, retry_after: str | None = None
) -> GatewayError:
    """Map an upstream failure (HTTP status, or 200 with an in-stream error type) to our error type."""
    our_type = _TYPE_BY_UPSTREAM_TYPE.get(upstream_type or "") or _type_for_status(status)
    text = scrub(f"upstream {upstream_type or status}: {message or 'no message'}")
    seconds = None
    if our_type in ("upstream_rate_limited", "upstream_overloaded"):
        try:
            seconds = parse_retry_after(retry_after)
        except (TypeError, ValueError):
            seconds = None
        seconds = seconds if seconds is not None else (1.0 if our_type == "upstream_rate_limited" else 5.0)
    return GatewayError(our_type, text, retry_after=seconds)


MAX_RETRY_AFTER = 60.0


def worth_retrying(status: int, headers: Mapping[str, str]) -> bool:
    """The SDKs' rule: the upstream's ``x-should-retry`` if it says, else 408, 409, 429 and 5xx."""
    should = headers.get("x-should-retry")
    if should in ("true", "false"):
        return should == "true"
    return status in (408, 409, 429) or status >= 500


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


MAX_ERROR_BODY = 64 * 1024


async def read_capped(body: AsyncIterable[bytes]) -> bytes:
    """An error answer's body, at most ``MAX_ERROR_BODY`` bytes of it."""
    data = b""
    async for chunk in body:
        data += chunk
        if len(data) >= MAX_ERROR_BODY:
            break
    return data[:MAX_ERROR_BODY]


class UpstreamResponse(Protocol):
    """What both HTTP clients' responses (httpx's, httpx2's) give the retry loop."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    def aiter_bytes(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


R = TypeVar("R", bound=UpstreamResponse)


async def send_with_retries(
    send: Callable[[], Awaitable[R]],
    *,
    retries: int,
    retry_on: tuple[type[Exception], ...],
    refused: Callable[[R, bytes], GatewayError],
) -> R:
    """The successful (2xx) response to ``send()``, tried again as the SDKs do: on ``retry_on`` errors and on
    answers ``worth_retrying``, after ``retry_delay``, up to ``retries`` times. A failure for good raises
    ``refused(response, its body)``. Only a request is retried, never a started stream."""
    attempt = 0
    while True:
        try:
            response = await send()
        except retry_on:
            raise_if_cancelling()
            if attempt >= retries:
                raise
            await asyncio.sleep(retry_delay(attempt, {}))
            attempt += 1
            continue
        if 200 <= response.status_code < 300:
            return response
        try:
            raw = await read_capped(response.aiter_bytes())
        finally:
            await response.aclose()
        if attempt >= retries or not worth_retrying(response.status_code, response.headers):
            raise refused(response, raw)
        await asyncio.sleep(retry_delay(attempt, response.headers))
        attempt += 1
