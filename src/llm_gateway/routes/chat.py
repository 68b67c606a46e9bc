"""POST /chat, chosen by the body (API.md §4): ``question`` (seed 002, cached), an AG-UI ``RunAgentInput``
(today's @tanstack/ai-client, resumable by run id), or bare ``messages`` (seed 003's legacy TanStack chunks)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ..bodies import MessagesRequest, QuestionRequest, RunAgentInput, from_client_messages, from_text
from ..errors import InvalidRequest, NotFound
from ..http import LeanRoute, decode_json, read_body, validate
from ..openapi import doc
from ..sse import check_resume, checked_event_id, resume_point, task_stream
from ..state import Gateway, gateway
from ..tenants import is_task_id, scoped, tenant_of


@doc(
    "Chat stream: question (status, cached), AG-UI run (agui), or messages (tanstack)",
    body=[QuestionRequest, RunAgentInput, MessagesRequest],
    stream="status | agui | tanstack, by the body",
    query=["format"],
    tag="chat",
)
async def chat(request: Request) -> Response:
    gw = gateway(request)
    data = decode_json(await read_body(request, gw.settings.max_body_bytes))
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object", status=422)
    if "question" in data:
        return await _question(request, gw, validate(data, QuestionRequest))
    if "runId" in data or "threadId" in data or "forwardedProps" in data or request.headers.get("x-run-id"):
        if "runId" not in data and request.headers.get("x-run-id"):
            data["runId"] = request.headers["x-run-id"]
        return await _agent_run(request, gw, validate(data, RunAgentInput))
    if "messages" in data:
        return await _legacy(request, gw, validate(data, MessagesRequest))
    raise InvalidRequest(
        "send a question, an AG-UI run (threadId, runId, messages) or messages",
        detail=[{"loc": ["body", "question"], "msg": "field required", "type": "missing"}],
        status=422,
    )


async def _question(request: Request, gw: Gateway, body: QuestionRequest) -> Response:
    after = resume_point(request)
    generation = from_text(body, gw.settings.claude_model)
    info = await gw.answers.task_for(tenant_of(request), generation, use_cache=body.use_cache)
    await check_resume(gw.store, info.task_id, after)
    return task_stream(request, gw, info.task_id, "status", after=after)


async def _agent_run(request: Request, gw: Gateway, body: RunAgentInput) -> Response:
    after = resume_point(request)
    generation = from_client_messages(body, gw.settings.claude_model)
    # The run id is the task id: the client's re-POST of the same run (with Last-Event-ID) attaches to it.
    info, _ = await gw.runner.submit(body.runId, generation, tenant=tenant_of(request), thread_id=body.threadId)
    await check_resume(gw.store, info.task_id, after)
    return task_stream(request, gw, info.task_id, "agui", after=after, thread_id=body.threadId)


async def _legacy(request: Request, gw: Gateway, body: MessagesRequest) -> Response:
    after = resume_point(request)
    generation = from_client_messages(body, gw.settings.claude_model)
    info, _ = await gw.runner.submit(None, generation, tenant=tenant_of(request))
    await check_resume(gw.store, info.task_id, after)
    return task_stream(request, gw, info.task_id, "tanstack", after=after)


@doc("Join an AG-UI run (joinRun)", stream="agui", query=["runId", "offset", "threadId", "format"], tag="chat")
async def join_run(request: Request) -> Response:
    """GET /chat?runId=…&offset=-1: joinRun() of @tanstack/ai-client, from the start (or after ``offset``)."""
    gw = gateway(request)
    run_id = request.query_params.get("runId") or request.headers.get("x-run-id")
    if not run_id:
        raise InvalidRequest("runId is required", detail=[{"loc": ["query", "runId"], "msg": "field required"}])
    info = await gw.store.get_task(scoped(tenant_of(request), run_id)) if is_task_id(run_id) else None
    if info is None:
        raise NotFound(f"no run {run_id[:128]!r}")
    offset = request.query_params.get("offset")
    after = resume_point(request) or (offset if offset not in (None, "", "-1") else None)
    if after is not None:
        checked_event_id(after)  # a bad offset is a 400 now, not a broken stream later
    await check_resume(gw.store, info.task_id, after)
    thread_id = request.query_params.get("threadId", "")
    return task_stream(request, gw, info.task_id, "agui", after=after, thread_id=thread_id)


routes = [LeanRoute("/chat", chat, methods=["POST"]), LeanRoute("/chat", join_run, methods=["GET"])]
