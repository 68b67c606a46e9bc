"""Server-sent events from an event log: resume by Last-Event-ID, keep-alives, the headers of API.md §3."""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import StreamingResponse

from .dialects import SSE_RENDERERS, Renderer
from .errors import InvalidRequest
from .store import Store, parse_event_id

KEEPALIVE_SECONDS = 15.0
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}


def resume_point(request: Request) -> str | None:
    """The event id to resume after: ``Last-Event-ID`` header, else ``?last_event_id=``; validated."""
    value = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if not value:
        return None
    parse_event_id(value)
    return value.strip()


def pick_renderer(request: Request, default: str) -> Renderer:
    name = request.query_params.get("format", default)
    renderer = SSE_RENDERERS.get(name)
    if renderer is None:
        raise InvalidRequest(
            f"unknown format {name!r}; one of: {', '.join(SSE_RENDERERS)}",
            detail=[{"loc": ["query", "format"], "msg": "unknown format", "input": name[:64]}],
        )
    return renderer


async def frames(
    store: Store, task_id: str, after: str | None, render: Renderer, *, heartbeat: float = KEEPALIVE_SECONDS
) -> AsyncIterator[bytes]:
    # An early comment flushes headers through buffering proxies before the first token.
    yield b": connected\n\n"
    async for batch in store.follow(task_id, after, heartbeat=heartbeat):
        if batch:
            yield b"".join([render(event_id, event) for event_id, event in batch])
        else:
            yield b": keep-alive\n\n"


def event_stream(body: AsyncIterator[bytes], task_id: str) -> StreamingResponse:
    headers = {**SSE_HEADERS, "X-Task-Id": task_id}
    return StreamingResponse(body, media_type="text/event-stream", headers=headers)
