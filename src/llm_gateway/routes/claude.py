"""Claude tasks (seed 000): prompt, prompt/async, queue, task status, cancel, SSE subscribe, WebSocket replay."""

from __future__ import annotations

import contextlib

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from ..aio import first_of, until_disconnect
from ..bodies import PromptRequest, from_prompt
from ..dialects import render_ws
from ..errors import GatewayError, NotFound
from ..events import TaskError, TaskInfo, TaskResult, TokenUsage
from ..http import JSONResponse, LeanRoute, read_json
from ..openapi import doc
from ..sse import check_resume, checked_event_id, event_stream, frames, pick_dialect, resume_point
from ..state import gateway
from ..tenants import path_task_id, public, tenant_of


class PromptResponse(msgspec.Struct):
    task_id: str
    response: str
    model: str
    stop_reason: str | None
    usage: TokenUsage


class Accepted(msgspec.Struct):
    task_id: str
    status: str
    status_url: str
    stream_url: str


class CancelRequested(msgspec.Struct):
    task_id: str
    status: str
    cancel_requested: bool


class TaskStatus(msgspec.Struct, omit_defaults=True):
    task_id: str
    status: str
    created_at: str
    updated_at: str
    result: TaskResult | None = None
    error: TaskError | None = None


async def _submit(request: Request) -> TaskInfo:
    gw = gateway(request)
    body = await read_json(request, PromptRequest, gw.settings.max_body_bytes)
    request_ = from_prompt(body, gw.settings.claude_model)
    info, _ = await gw.runner.submit(body.task_id, request_, tenant=tenant_of(request))
    return info


def _accepted(info: TaskInfo) -> JSONResponse:
    task_id = public(info.task_id)
    status_url = f"/api/claude/task/{task_id}"
    body = Accepted(task_id, info.status, status_url, f"/api/claude/subscribe/{task_id}")
    return JSONResponse(body, status_code=202, headers={"X-Task-Id": task_id, "Location": status_url})


@doc("Run a prompt and wait for the whole answer", body=[PromptRequest], response=PromptResponse, tag="claude")
async def prompt(request: Request) -> Response:
    info = await _submit(request)
    terminal = await gateway(request).runner.answer(info.task_id)
    task_id = public(info.task_id)
    body = PromptResponse(task_id, terminal.text, terminal.model, terminal.stop_reason, terminal.usage)
    return JSONResponse(body, headers={"X-Task-Id": task_id})


@doc("Start a task (or queue one with your task_id)", body=[PromptRequest], response=Accepted, status=202, tag="claude")
async def prompt_async(request: Request) -> Response:
    return _accepted(await _submit(request))


async def _task(request: Request) -> TaskInfo:
    task_id = path_task_id(request)
    info = await gateway(request).store.get_task(task_id)
    if info is None:
        raise NotFound(f"no task {public(task_id)} (unknown or expired)")
    return info


@doc("A task's status and result", response=TaskStatus, tag="claude")
async def task_status(request: Request) -> Response:
    info = await _task(request)
    body = TaskStatus(public(info.task_id), info.status, info.created_at, info.updated_at, info.result, info.error)
    return JSONResponse(body)


@doc("Cancel a task wherever it runs", response=CancelRequested, status=202, tag="claude")
async def cancel_task(request: Request) -> Response:
    info = await gateway(request).runner.cancel(path_task_id(request))
    return JSONResponse(CancelRequested(public(info.task_id), info.status, True), status_code=202)


@doc(
    "Stream a task's events (from any replica)",
    stream="native",
    query=["format", "last_event_id"],
    others={"204": ("Resumed after the task's last event: nothing more will come (EventSource stops)", [])},
    tag="claude",
)
async def subscribe(request: Request) -> Response:
    after = resume_point(request)
    info = await _task(request)
    dialect = pick_dialect(request, "native", info.task_id)
    gw = gateway(request)
    await check_resume(gw.store, info.task_id, after)
    if after is not None and info.finished and not await gw.store.read(info.task_id, after):
        # Resumed after the terminal event: 204 is what makes EventSource stop reconnecting.
        return Response(status_code=204, headers={"X-Task-Id": public(info.task_id)})
    return event_stream(frames(gw.store, info.task_id, after, dialect), info.task_id, gw.released)


async def replay_ws(websocket: WebSocket) -> None:
    """Every event after ``?after=`` as ``{id, event, data}``, live until the terminal one."""
    gw = gateway(websocket)
    await websocket.accept()
    try:
        task_id = path_task_id(websocket)
        after = websocket.query_params.get("after") or None
        if after is not None:
            checked_event_id(after)
        if await gw.store.get_task(task_id) is None:
            raise NotFound(f"no task {public(task_id)} (unknown or expired)")
        await check_resume(gw.store, task_id, after)
    except GatewayError as exc:
        message = {"event": "error", "data": {"type": exc.type, "message": exc.message}}
        await websocket.send_text(msgspec.json.encode(message).decode())
        await websocket.close(code={404: 4404, 503: 1013}.get(exc.status, 4400))  # 1013: try again later
        return

    async def send_events() -> None:
        async for batch in gw.store.follow(task_id, after):
            for event_id, event in batch:
                await websocket.send_text(render_ws(event_id, event).decode())

    if await first_of(send_events(), until_disconnect(websocket)):
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await websocket.close(code=1000)


routes = [
    LeanRoute("/api/claude/prompt", prompt, methods=["POST"]),
    LeanRoute("/api/claude/prompt/async", prompt_async, methods=["POST"]),
    LeanRoute("/api/claude/queue", prompt_async, methods=["POST"]),
    LeanRoute("/api/claude/task/{task_id}", task_status, methods=["GET"]),
    LeanRoute("/api/claude/task/{task_id}", cancel_task, methods=["DELETE"]),
    LeanRoute("/api/claude/subscribe/{task_id}", subscribe, methods=["GET"]),
    WebSocketRoute("/api/claude/ws/{task_id}", replay_ws),
]
