"""The responses of both LLM APIs, the same steps in their own wire formats (`Format`): an HTTP error, a JSON
body, or an SSE stream that may fail half-way (`respond`)."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any, Literal, Protocol

import msgspec
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .answer import Answer
from .plan import HTTPFault, Plan

SSE = "text/event-stream"
_STALL_SECONDS = 3600.0

encode = msgspec.json.Encoder().encode

Frames = tuple[list[bytes], list[bytes], list[bytes]]  # before the text deltas, the deltas, after them


class UpstreamError(Exception):
    """An error response, rendered in the shape of the API whose handler raised it."""

    def __init__(self, status: int, error_type: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type = error_type
        self.message = message
        self.headers = headers or {}


class Format(Protocol):
    """One API's wire format, for the answer to one request."""

    def error(self, fault: HTTPFault, headers: dict[str, str] | None) -> UpstreamError: ...

    def body(self, answer: Answer) -> dict[str, Any]: ...

    def frames(self, answer: Answer) -> Frames: ...

    def midstream_error(self) -> bytes: ...


def request_id() -> str:
    return "req_emu_" + secrets.token_hex(12)


def json_response(data: object) -> Response:
    return Response(encode(data), headers={"request-id": request_id()}, media_type="application/json")


async def respond(plan: Plan, wire: Format) -> Response:
    """Answer as ``plan`` says, in ``wire``'s format."""
    if (http_fault := plan.http_fault) is not None:
        raise wire.error(http_fault, {"retry-after": str(plan.retry_after)} if http_fault == "429" else None)
    answer = plan.answer()
    fault = plan.fault
    if not plan.stream:
        if fault == "drop" or fault == "stall":
            return Stream([], [], [], media_type="application/json", delay=0, end=fault)
        if plan.paced:
            await asyncio.sleep(plan.delay * len(answer.deltas))
        return json_response(wire.body(answer))

    head, deltas, tail = wire.frames(answer)
    match fault:
        case "error_midstream":
            return Stream(head, deltas[: plan.after], [wire.midstream_error()], media_type=SSE, delay=plan.delay)
        case "drop" | "stall":
            return Stream(head, deltas[: plan.after], [], media_type=SSE, delay=plan.delay, end=fault)
    return Stream(head, deltas, tail, media_type=SSE, delay=plan.delay)


class Stream(Response):
    """Sends ``head``, then ``deltas`` with pauses, then ``tail``, or ends early (``end``) to emulate a fault.

    Raw ASGI rather than `StreamingResponse`, so that ``drop`` can end a response half-way: uvicorn closes the
    socket when an app returns mid-body (and logs one line).
    """

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
        self.init_headers({"cache-control": "no-cache", "request-id": request_id()})
        self.head, self.deltas, self.tail = head, deltas, tail
        self.delay = delay
        self.end = end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # uvicorn (ASGI spec 2.3) silently drops what is sent to a client that left, so watch for the
        # disconnect and stop then; otherwise a stall or a slow stream would run on for nothing.
        async with asyncio.TaskGroup() as group:
            watcher = group.create_task(until_disconnect(receive))
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


async def until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
