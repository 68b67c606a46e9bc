"""Trellis image-to-3D (seed 000): create, WebSocket status on any replica, latest status, SSE, webhook."""

from __future__ import annotations

import contextlib
import hmac
from typing import Annotated, Any

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from ..aio import first_of, until_disconnect
from ..errors import ErrorBody, GatewayError, InvalidRequest, NotFound
from ..http import JSONResponse, LeanRoute, decode_json, read_body, read_json, validate
from ..openapi import doc
from ..sse import check_resume, event_stream, frames, pick_dialect, resume_point
from ..state import Gateway, gateway
from ..tenants import tenant_of
from ..trellis import StatusRenderer, TrellisMessage, error_message, is_piapi_id, log_id, trellis_message

NonEmpty = Annotated[str, Meta(min_length=1)]


class TrellisInput(msgspec.Struct, kw_only=True):
    image: NonEmpty | None = None
    prompt: NonEmpty | None = None


class TrellisTaskRequest(msgspec.Struct, kw_only=True):
    """PiAPI's create-task body (forwarded unchanged; other fields pass through)."""

    model: NonEmpty
    task_type: NonEmpty
    input: TrellisInput
    config: dict[str, Any] | None = None


class PiAPIAnswer(msgspec.Struct):
    """PiAPI's answer to a create, passed through: the task in ``data`` (or, on a 4xx, what went wrong)."""

    code: int
    message: str
    data: Any = None


# PiAPI's 4xx to a create come back as they are (API.md §4); the gateway's own 4xx are in the error shape.
PIAPI_4XX = ("PiAPI's own 4xx answer, passed through; or the gateway's error (API.md §5)", [ErrorBody, PiAPIAnswer])


class Received(msgspec.Struct):
    received: bool


class WebhookBody(msgspec.Struct):
    data: dict[str, Any]
    timestamp: int | float | None = None


def _require_trellis(gw: Gateway) -> None:
    if not gw.settings.trellis_api_key:
        raise GatewayError("unavailable", "Trellis is not configured: set TRELLIS_API_KEY")


@doc(
    "Create a PiAPI Trellis task (PiAPI's answer and status code)",
    body=[TrellisTaskRequest],
    response=PiAPIAnswer,
    others={"422": PIAPI_4XX, "4XX": PIAPI_4XX},
    tag="trellis",
)
async def create_task(request: Request) -> Response:
    gw = gateway(request)
    raw = await read_body(request, gw.settings.max_body_bytes)  # forwarded to PiAPI unchanged
    body = validate(decode_json(raw), TrellisTaskRequest)
    if body.task_type == "text-to-3d" and body.input.prompt is None:
        raise InvalidRequest("text-to-3d needs input.prompt", detail=[{"loc": ["body", "input", "prompt"]}], status=422)
    if body.task_type != "text-to-3d" and body.input.image is None:
        detail = [{"loc": ["body", "input", "image"], "msg": "field required", "type": "missing"}]
        raise InvalidRequest("input.image is required", detail=detail, status=422)
    _require_trellis(gw)
    status, answer = await gw.trellis.create(raw, tenant_of(request))
    return JSONResponse(answer, status_code=status)


def _checked(gw: Gateway, task_id: str) -> str:
    """Trellis configured, and a task id of PiAPI's shape (fit to put in PiAPI's URL)."""
    _require_trellis(gw)
    if not is_piapi_id(task_id):
        raise NotFound(f"no Trellis task {task_id[:64]!r}")
    return task_id


@doc("The latest known status of a Trellis task", response=TrellisMessage, tag="trellis")
async def task_status(request: Request) -> Response:
    gw = gateway(request)
    task_id = _checked(gw, request.path_params["task_id"])
    if not await gw.trellis.known(task_id, tenant_of(request)):
        raise NotFound(f"Trellis task {task_id} is unknown here and at PiAPI")
    return JSONResponse(trellis_message(await gw.trellis.status(task_id)))


@doc("The Trellis task's status updates over SSE", stream="trellis", query=["format", "last_event_id"], tag="trellis")
async def task_events(request: Request) -> Response:
    gw = gateway(request)
    task_id = _checked(gw, request.path_params["task_id"])
    after = resume_point(request)
    if not await gw.trellis.known(task_id, tenant_of(request)):
        raise NotFound(f"Trellis task {task_id} is unknown here and at PiAPI")
    dialect = pick_dialect(request, "trellis", log_id(task_id))
    await check_resume(gw.store, log_id(task_id), after)

    async def watched() -> Any:
        async with gw.trellis.watching(task_id):
            async for chunk in frames(gw.store, log_id(task_id), after, dialect):
                yield chunk

    return event_stream(watched(), task_id, gw.released)


async def task_ws(websocket: WebSocket) -> None:
    """Seed 000's socket: the latest status at once, then every change; ``close`` from the client ends it."""
    gw = gateway(websocket)
    task_id = websocket.path_params["task_id"]
    await websocket.accept()
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        try:
            known = await gw.trellis.known(_checked(gw, task_id), tenant_of(websocket))
        except GatewayError as exc:
            await _send(websocket, error_message(exc.message))
            await websocket.close()
            return
        if not known:
            await _send(websocket, error_message(f"Trellis task {task_id} not found"))
            await websocket.close()
            return
        async with gw.trellis.watching(task_id):
            await first_of(_send_updates(gw, websocket, task_id), until_disconnect(websocket, stop=_is_close))
        await websocket.close()


async def _send(websocket: WebSocket, message: TrellisMessage) -> None:
    await websocket.send_text(msgspec.json.encode(message).decode())


async def _send_updates(gw: Gateway, websocket: WebSocket, task_id: str) -> None:
    statuses = StatusRenderer()
    async with contextlib.aclosing(gw.trellis.updates(task_id)) as updates:
        async for event in updates:
            message = statuses.render(event)
            if message is not None:
                await _send(websocket, message)


def _is_close(text: str) -> bool:
    return text.strip().lower() == "close"


@doc(
    "PiAPI's webhook: a valid secret publishes the status at once", body=[WebhookBody], response=Received, tag="trellis"
)
async def webhook(request: Request) -> Response:
    gw = gateway(request)
    expected = gw.settings.trellis_webhook_secret
    offered = request.headers.get("x-webhook-secret", "")
    if not expected or not hmac.compare_digest(offered.encode(), expected.encode()):
        raise GatewayError("unauthorized", "invalid or missing x-webhook-secret")
    body = await read_json(request, WebhookBody, gw.settings.max_body_bytes)
    if not isinstance(task_id := body.data.get("task_id"), str) or not is_piapi_id(task_id):
        detail = [{"loc": ["body", "data", "task_id"], "msg": "a PiAPI task id (letters, digits and -)"}]
        raise InvalidRequest("data.task_id is required, as PiAPI gives it", detail=detail, status=422)
    await gw.trellis.publish(body.data)
    return JSONResponse(Received(True))


routes = [
    LeanRoute("/api/trellis/task", create_task, methods=["POST"]),
    LeanRoute("/api/trellis/task/{task_id}", task_status, methods=["GET"]),
    LeanRoute("/api/trellis/task/{task_id}/events", task_events, methods=["GET"]),
    WebSocketRoute("/api/trellis/task/ws/{task_id}", task_ws),
    LeanRoute("/api/trellis/webhook", webhook, methods=["POST"]),
]
