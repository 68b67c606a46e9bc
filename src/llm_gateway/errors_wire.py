"""Errors in the shape the caller's SDK reads: one ``GatewayError``, rendered by the rule its request matches.

The drop-in APIs (API.md §4) answer in their vendor's shape, so the official SDKs raise their own exception
classes; everything else answers in the contract's shape (API.md §5). ``RENDERERS`` holds the rules, first
match wins: a more specific rule (an Anthropic one for ``/v1/messages``, say) goes before the OpenAI one, which
takes every ``/v1/`` request that does not carry ``anthropic-version``. The app's exception handlers and the
key middleware both answer through ``wire_error_response``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from starlette.types import Scope

from .errors import ErrorType, GatewayError
from .http import JSONResponse, error_response

ErrorRenderer = Callable[[GatewayError], JSONResponse]
Matcher = Callable[[Scope], bool]


class OpenAIError(msgspec.Struct, omit_defaults=True):
    """OpenAI's error object; ``retryable`` and ``retry_after`` only in a stream's error chunk (API.md §1)."""

    message: str
    type: str
    param: str | None  # required, so always sent (null or not), as OpenAI does
    code: str | None
    retryable: bool | None = None
    retry_after: float | None = None


class OpenAIErrorBody(msgspec.Struct):
    error: OpenAIError


# OpenAI's own codes where it has one; otherwise our type is the code, so nothing is lost.
_OPENAI_CODES: dict[ErrorType, str] = {
    "unauthorized": "invalid_api_key",
    "rate_limited": "rate_limit_exceeded",
    "upstream_rate_limited": "rate_limit_exceeded",
}


def openai_error(type_: ErrorType, message: str, status: int, param: str | None = None) -> OpenAIError:
    if status == 429:
        kind = "requests"  # OpenAI's type for a request-rate limit
    elif status >= 500:
        kind = "server_error"
    else:
        kind = "invalid_request_error"  # OpenAI's type for every 4xx, a bad key included
    return OpenAIError(message, kind, param, _OPENAI_CODES.get(type_, type_))


def _param(detail: Any) -> str | None:
    """The first bad field of a 400's detail as OpenAI names it: ``messages[0].content``."""
    if not isinstance(detail, list) or not detail or not isinstance(detail[0], dict):
        return None
    path = [str(part) for part in detail[0].get("loc", ()) if part not in ("body", "query")]
    return "".join(f"[{part}]" if part.isdigit() else f".{part}" for part in path).lstrip(".") or None


def openai_error_body(exc: GatewayError) -> OpenAIErrorBody:
    return OpenAIErrorBody(openai_error(exc.type, exc.message, _openai_status(exc), _param(exc.detail)))


def _openai_status(exc: GatewayError) -> int:
    return 400 if exc.status == 422 else exc.status  # OpenAI answers an invalid body 400


def openai_error_response(exc: GatewayError, headers: dict[str, str] | None = None) -> JSONResponse:
    status = _openai_status(exc)
    return JSONResponse(openai_error_body(exc), status_code=status, headers={**exc.headers(), **(headers or {})})


def header(scope: Scope, name: bytes) -> bytes | None:
    return next((value for key, value in scope.get("headers", ()) if key == name), None)


def speaks_openai(scope: Scope) -> bool:
    path = str(scope.get("path", ""))
    # /v1/messages speaks Anthropic's shape whatever its headers (anthropic_errors.AnthropicErrors rewrites it).
    return (
        path.startswith("/v1/") and not path.startswith("/v1/messages") and header(scope, b"anthropic-version") is None
    )


RENDERERS: list[tuple[Matcher, ErrorRenderer]] = [
    (speaks_openai, openai_error_response),
]


def wire_error_response(scope: Scope, exc: GatewayError) -> JSONResponse:
    """``exc`` in the shape of the first rule ``scope`` matches, else the contract's."""
    render = next((renderer for matches, renderer in RENDERERS if matches(scope)), error_response)
    return render(exc)
