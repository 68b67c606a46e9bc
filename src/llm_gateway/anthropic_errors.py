"""Our errors in Anthropic's shape, ``{"type": "error", "error": {type, message}}`` (wire-formats §1.3), with the
status codes the anthropic SDKs turn into their own exception classes:

    ours                          Anthropic                       the Python SDK raises
    invalid_request (400, 422)    400 invalid_request_error       BadRequestError
    unauthorized                  401 authentication_error        AuthenticationError
    not_found                     404 not_found_error             NotFoundError
    payload_too_large             413 request_too_large           ContentTooLargeError
    rate_limited, upstream_…      429 rate_limit_error            RateLimitError (+ retry-after)
    upstream_overloaded           529 overloaded_error            OverloadedError
    upstream_timeout              504 timeout_error               GatewayTimeoutError
    upstream_auth, upstream_error 502 api_error                   InternalServerError
    unavailable                   503 overloaded_error            ServiceUnavailableError
    interrupted                   503 api_error                   ServiceUnavailableError
    internal                      500 api_error                   InternalServerError
    cancelled                     499 invalid_request_error       ClientClosedRequestError

Choices a reader may not expect: ``upstream_auth`` is the gateway's own upstream credential failing, not the
client's key, so it is a 502 rather than a 401 that would send the client looking at its key. ``cancelled``
(someone cancelled the task) is a 499 because the SDKs retry a 409, which would start the cancelled work again.

`AnthropicErrors` rewrites every error answer under ``/v1/messages`` — the routes', the key middleware's 401
and 429, the app's 404 and 405, the store's 503 — so none reaches an SDK in our own shape.
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ErrorBody, ErrorType

ANTHROPIC_ERRORS: dict[ErrorType, tuple[int, str]] = {
    "invalid_request": (400, "invalid_request_error"),
    "unauthorized": (401, "authentication_error"),
    "not_found": (404, "not_found_error"),
    "conflict": (409, "invalid_request_error"),
    "payload_too_large": (413, "request_too_large"),
    "rate_limited": (429, "rate_limit_error"),
    "upstream_rate_limited": (429, "rate_limit_error"),
    "upstream_overloaded": (529, "overloaded_error"),
    "upstream_timeout": (504, "timeout_error"),
    "upstream_auth": (502, "api_error"),
    "upstream_error": (502, "api_error"),
    "unavailable": (503, "overloaded_error"),
    "interrupted": (503, "api_error"),
    "internal": (500, "api_error"),
    "cancelled": (499, "invalid_request_error"),
}


class AnthropicErrorDetail(msgspec.Struct):
    type: str
    message: str


class AnthropicErrorBody(msgspec.Struct):
    """Anthropic's error answer, for the OpenAPI document (the bodies themselves are built below)."""

    type: str
    error: AnthropicErrorDetail


_encode = msgspec.json.Encoder().encode
_decode_ours = msgspec.json.Decoder(ErrorBody).decode


def anthropic_type(ours: ErrorType) -> str:
    return ANTHROPIC_ERRORS[ours][1]


def anthropic_status(ours: ErrorType, status: int) -> int:
    """Anthropic's status for our error; a bad request keeps its own 4xx (405, say), but 422 is 400 there."""
    if ours == "invalid_request" and status != 422:
        return status
    return ANTHROPIC_ERRORS[ours][0]


def anthropic_error(status: int, body: bytes) -> tuple[int, bytes]:
    """Our error answer (``ErrorBody``) as Anthropic's: its status and body."""
    try:
        ours = _decode_ours(body)
    except msgspec.DecodeError:
        kind = "invalid_request_error" if status < 500 else "api_error"
        return status, _encode({"type": "error", "error": {"type": kind, "message": f"HTTP {status}"}})
    message = ours.error
    if isinstance(ours.detail, list):  # each bad field, as Anthropic names them: messages.0.content: …
        message = "; ".join([message, *(_field(item) for item in ours.detail)])
    error = {"type": anthropic_type(ours.type), "message": message}
    return anthropic_status(ours.type, status), _encode({"type": "error", "error": error})


def _field(item: Any) -> str:
    if not isinstance(item, dict):
        return str(item)
    loc = [str(part) for part in item.get("loc", ()) if part not in ("body", "query")]
    return f"{'.'.join(loc)}: {item.get('msg', 'invalid')}" if loc else str(item.get("msg", "invalid"))


INTERNAL = 500, _encode({"type": "error", "error": {"type": "api_error", "message": "internal server error"}})


class AnthropicErrors:
    """Error answers under ``prefix`` in Anthropic's shape (see the module docstring); other answers pass as sent.

    An error answer is held until its body is complete (they are small JSON bodies), then sent rewritten with
    its headers kept (``Retry-After``, ``X-Task-Id``). An exception no handler answered becomes Anthropic's 500
    here, because Starlette's own last-resort handler sits outside every middleware; it is raised on, so the
    server still logs it.
    """

    def __init__(self, app: ASGIApp, prefix: str = "/v1/messages") -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            return await self.app(scope, receive, send)
        started = False
        held: Message | None = None
        chunks: list[bytes] = []

        async def rewriting(message: Message) -> None:
            nonlocal started, held
            if message["type"] == "http.response.start":
                started = True
                if message["status"] >= 400:
                    held = message
                    return
            elif held is not None and message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    await _send_error(send, *anthropic_error(held["status"], b"".join(chunks)), held["headers"])
                return
            await send(message)

        try:
            await self.app(scope, receive, rewriting)
        except Exception:
            if not started:
                await _send_error(send, *INTERNAL, [])
            raise


async def _send_error(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    kept = [(name, value) for name, value in headers if name.lower() not in (b"content-length", b"content-type")]
    kept += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": kept})
    await send({"type": "http.response.body", "body": body})
