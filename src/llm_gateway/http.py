"""Request parsing and response helpers shared by the routes: bodies in, msgspec JSON out."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .errors import GatewayError, InvalidRequest, error_body

T = TypeVar("T")
_encode = msgspec.json.Encoder().encode
_AT = re.compile(r"^(.*) - at `\$(.*)`$")


class LeanRoute(Route):
    """A route whose request runs without Starlette's per-request wrapper (``request_response`` and the
    exception-catching ``send`` it adds). That wrapper's closures live as long as the response: for an event
    stream, its whole life (~2 KiB a subscriber, tracemalloc). Exceptions reach the same handlers, through
    ExceptionMiddleware."""

    def __init__(self, path: str, endpoint: Callable[[Request], Awaitable[Response]], **options: Any) -> None:
        super().__init__(path, endpoint, **options)

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            response = await endpoint(Request(scope, receive, send))
            await response(scope, receive, send)

        self.app = app


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return _encode(content)


def error_response(exc: GatewayError) -> JSONResponse:
    return JSONResponse(error_body(exc), status_code=exc.status, headers=exc.headers())


async def read_body(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise GatewayError("payload_too_large", f"request body over {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise GatewayError("payload_too_large", f"request body over {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def decode_json(raw: bytes | str, what: str = "request body") -> Any:
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidRequest(f"{what} is nested too deeply") from None


async def read_json(request: Request, model: type[T], max_bytes: int) -> T:
    return validate(decode_json(await read_body(request, max_bytes)), model)


def validate(data: Any, model: type[T]) -> T:
    """Convert decoded JSON to ``model``; on failure list every bad field with its path."""
    try:
        return msgspec.convert(data, model)
    except msgspec.ValidationError as exc:
        errors = field_errors(data, model) or [_describe(str(exc), [])]
        raise InvalidRequest("invalid request body", detail=errors, status=422) from None


def field_errors(data: Any, model: type[Any]) -> list[dict[str, Any]]:
    """Check each field of a Struct on its own, since msgspec stops at the first error."""
    if not isinstance(data, dict) or not isinstance(model, type) or not issubclass(model, msgspec.Struct):
        return []
    errors = []
    for field in msgspec.structs.fields(model):
        if field.encode_name not in data:
            if field.required:
                errors.append({"loc": ["body", field.encode_name], "msg": "field required", "type": "missing"})
            continue
        try:
            msgspec.convert(data[field.encode_name], field.type)
        except msgspec.ValidationError as exc:
            errors.append(_describe(str(exc), [field.encode_name]))
    return errors


def _describe(message: str, loc: list[str]) -> dict[str, Any]:
    match = _AT.match(message)
    path = loc
    if match:
        message = match[1]
        path = loc + [p for p in re.split(r"[.\[\]]+", match[2]) if p]
    return {"loc": ["body", *path], "msg": message, "type": "invalid"}


def require_text(value: str, field: str) -> str:
    """Text the model must get: not empty once stripped (the Messages API refuses blank text)."""
    if not value.strip():
        detail = [{"loc": ["body", field], "msg": "must not be blank", "type": "invalid"}]
        raise InvalidRequest(f"{field} must not be blank", detail=detail, status=422)
    return value
