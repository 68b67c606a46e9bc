"""Errors the gateway answers with, in the contract's shape (API.md §5).

    GatewayError            type + HTTP status + message (+ detail, Retry-After)
     ├── InvalidRequest     400/422 invalid_request
     ├── NotFound           404 not_found
     ├── Conflict           409 conflict
     └── StoreUnavailable   503 unavailable: the store did not answer (down, stalled, unreachable)

Upstream failures are ``GatewayError`` with an ``upstream_*`` type, built by the providers.
Inside a stream the same types arrive as an ``error`` event, plus ``cancelled`` and ``interrupted``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

ErrorType = Literal[
    "invalid_request",
    "unauthorized",
    "not_found",
    "conflict",
    "payload_too_large",
    "rate_limited",
    "upstream_auth",
    "upstream_rate_limited",
    "upstream_overloaded",
    "upstream_timeout",
    "upstream_error",
    "unavailable",
    "internal",
    "cancelled",
    "interrupted",
]
CancelReason = Literal["cancelled", "interrupted"]  # why a running generation was stopped by us

STATUS_BY_TYPE: dict[ErrorType, int] = {
    "invalid_request": 400,
    "unauthorized": 401,
    "not_found": 404,
    "conflict": 409,
    "payload_too_large": 413,
    "rate_limited": 429,
    "upstream_auth": 502,
    "upstream_rate_limited": 429,
    "upstream_overloaded": 503,
    "upstream_timeout": 504,
    "upstream_error": 502,
    "unavailable": 503,
    "internal": 500,
    "cancelled": 409,  # a waiting client (POST /api/claude/prompt) whose task someone cancelled
    "interrupted": 503,
}

RETRYABLE_TYPES: frozenset[ErrorType] = frozenset(
    {"rate_limited", "upstream_rate_limited", "upstream_overloaded", "upstream_timeout", "unavailable", "interrupted"}
)


class GatewayError(Exception):
    def __init__(
        self,
        type: ErrorType,
        message: str,
        *,
        status: int | None = None,
        detail: Any = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.type = type
        self.message = message
        self.status = status or STATUS_BY_TYPE[type]
        self.detail = detail
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.type in RETRYABLE_TYPES

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, round(self.retry_after)))}


class InvalidRequest(GatewayError):
    def __init__(self, message: str, *, detail: Any = None, status: int = 400) -> None:
        super().__init__("invalid_request", message, status=status, detail=detail)


class NotFound(GatewayError):
    def __init__(self, message: str) -> None:
        super().__init__("not_found", message)


class Conflict(GatewayError):
    def __init__(self, message: str) -> None:
        super().__init__("conflict", message)


class StoreUnavailable(GatewayError):
    """The store did not answer. Raised by the store for every failure that says it is out of reach, whatever
    the backend's own exception was (``cause`` names it)."""

    def __init__(self, cause: str) -> None:
        super().__init__("unavailable", "the store is unavailable; try again shortly", retry_after=1)
        self.cause = cause


class ErrorBody(msgspec.Struct, kw_only=True, omit_defaults=True):
    success: bool
    error: str
    type: ErrorType
    detail: Any = None
    timestamp: str


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def error_body(exc: GatewayError) -> ErrorBody:
    return ErrorBody(success=False, error=exc.message, type=exc.type, detail=exc.detail, timestamp=utc_now_iso())
