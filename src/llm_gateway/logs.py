"""Logging: text or one JSON object a line (``LOG_FORMAT``), each with its request id and task id.

The request id comes from the client's ``X-Request-Id`` (when it is a plain token) or is made here, and is
echoed in the response; a generation's log lines carry its task id. Log calls never pass bodies, prompts or
keys, and uvicorn's request lines go through ``auth.RedactKeysFilter``.
"""

from __future__ import annotations

import contextvars
import logging
import re
import time
import uuid

import msgspec
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
TASK_ID: contextvars.ContextVar[str] = contextvars.ContextVar("task_id", default="")
_TOKEN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_encode = msgspec.json.Encoder().encode


class ContextFilter(logging.Filter):
    """Puts the current request id and task id on every record (for either format)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        record.task_id = TASK_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in ("request_id", "task_id"):
            if value := getattr(record, field, ""):
                line[field] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return _encode(line).decode()


def configure(level: str, log_format: str) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs a line per upstream request; the SDK's DEBUG lines hold request bodies (prompts) and headers.
    for chatty in ("httpx", "httpx2", "anthropic", "openai"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))


class RequestIdMiddleware:
    """Takes ``X-Request-Id`` from the request (or makes one), echoes it, and sets it for the request's logs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        offered = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = offered if _TOKEN.fullmatch(offered) else uuid.uuid4().hex
        token = REQUEST_ID.set(request_id)

        async def echo(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, echo)
        finally:
            REQUEST_ID.reset(token)
