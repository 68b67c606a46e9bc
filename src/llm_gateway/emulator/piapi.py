"""PiAPI's task API (Trellis): ``POST /api/v1/task``, ``GET /api/v1/task/{task_id}``, key in ``x-api-key``.

How a task is steered: `llm_gateway.emulator.piapi_task`.

- PiAPI does not document its error bodies: here they are ``{"code": status, "message": …, "data": null}``.
- ``POST /_emulator/piapi/{task_id}/webhook`` sends a task's webhook now (``{"sent": true, "status": …}``).
  Timers for ``webhook_on_finish`` are owned by the app and cancelled by its lifespan: serve it with the lifespan
  on, or leave them to the event loop's end.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Coroutine
from typing import Any

import httpx
import msgspec
from starlette.requests import Request
from starlette.responses import Response

from .piapi_task import PiapiTask, task_request_decoder
from .state import Emulator
from .stream import encode, until_disconnect

logger = logging.getLogger(__name__)


class PiapiError(Exception):
    """A PiAPI error response, ``{"code": status, "message": …, "data": null}`` (the shape is our guess)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _piapi_json(body: object, status: int = 200) -> Response:
    return Response(encode(body), status, media_type="application/json")


def piapi_error_response(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PiapiError)
    return _piapi_json({"code": exc.status, "message": exc.message, "data": None}, exc.status)


def _piapi_ok(data: dict[str, Any]) -> Response:
    return _piapi_json({"code": 200, "message": "success", "data": data})


def _garbage() -> Response:
    return Response(b"<html>oops", media_type="text/html")


async def _sleep_unless_disconnected(request: Request, seconds: float) -> bool:
    """Sleep ``seconds`` and return True, or return False as soon as the client leaves.

    A plain handler is not cancelled when its client goes (uvicorn, ASGI spec 2.3), so watch for the disconnect.
    The body must have been read: what ``receive`` gives next is the disconnect.
    """
    try:
        async with asyncio.timeout(seconds):
            await until_disconnect(request.receive)
    except TimeoutError:
        return True
    return False


class _NoWebhook(Exception):
    pass


class Piapi:
    """The emulated PiAPI of one app: its tasks, and the timers of their ``webhook_on_finish``."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.stats = emulator.stats
        self.tasks: dict[str, PiapiTask] = {}
        self.background: set[asyncio.Task[None]] = set()  # webhook_on_finish timers
        self.closed = False

    async def create(self, request: Request) -> Response:
        self.stats.piapi_creates += 1
        self._authenticate(request)
        raw = await request.body()
        self.stats.bodies.append(raw)
        try:
            body = task_request_decoder.decode(raw)
        except msgspec.DecodeError as exc:
            raise PiapiError(400, str(exc)) from None
        match body.emulator.create_fault:
            case "500":
                raise PiapiError(500, "internal server error")
            case "400":
                raise PiapiError(400, "invalid request")
            case "garbage":
                return _garbage()
            case "timeout":
                if not await _sleep_unless_disconnected(request, body.emulator.timeout_s):
                    return Response(status_code=499)  # nobody reads it: the client is gone
        task = PiapiTask(str(uuid.uuid4()), body)
        self.tasks[task.id] = task
        if body.emulator.webhook_on_finish:
            self._spawn(self._webhook_on_finish(task))
        return _piapi_ok(task.data(0.0))

    async def get(self, request: Request) -> Response:
        task_id: str = request.path_params["task_id"]
        self.stats.piapi_gets += 1
        self.stats.piapi_gets_by_task[task_id] = self.stats.piapi_gets_by_task.get(task_id, 0) + 1
        self._authenticate(request)
        task = self._task(task_id)
        task.gets += 1
        options = task.options
        if options.get_fault is not None and (options.get_fault_count is None or task.gets <= options.get_fault_count):
            match options.get_fault:
                case "500":
                    raise PiapiError(500, "internal server error")
                case "garbage":
                    return _garbage()
                case "timeout":
                    await request.body()  # a GET's (empty) body, so that what follows is the disconnect
                    if not await _sleep_unless_disconnected(request, options.timeout_s):
                        return Response(status_code=499)
        return _piapi_ok(task.data(task.elapsed()))

    async def webhook(self, request: Request) -> Response:
        """Test control: POST the task's webhook now, and say what its endpoint answered."""
        task = self._task(request.path_params["task_id"])
        try:
            status = await self._send_webhook(task)
        except _NoWebhook:
            return _piapi_json({"sent": False, "error": "the task has no config.webhook_config.endpoint"}, 400)
        except httpx.HTTPError as exc:
            return _piapi_json({"sent": False, "error": f"{type(exc).__name__}: {exc}"}, 502)
        return _piapi_json({"sent": True, "status": status})

    def _authenticate(self, request: Request) -> None:
        api_key = self.emulator.api_key
        if api_key is not None and request.headers.get("x-api-key") != api_key:
            raise PiapiError(401, "Unauthorized")

    def _task(self, task_id: str) -> PiapiTask:
        task = self.tasks.get(task_id)
        if task is None:
            raise PiapiError(404, "task not found")
        return task

    async def _send_webhook(self, task: PiapiTask) -> int:
        hook = task.webhook
        if hook is None or not hook.endpoint:
            raise _NoWebhook
        headers = {"content-type": "application/json"}
        if hook.secret:
            headers["x-webhook-secret"] = hook.secret
        body = encode({"timestamp": int(time.time()), "data": task.data(task.elapsed())})
        async with httpx.AsyncClient(timeout=5.0) as client:
            response = await client.post(hook.endpoint, content=body, headers=headers)
        return response.status_code

    async def _webhook_on_finish(self, task: PiapiTask) -> None:
        await asyncio.sleep(max(0.0, task.ends_after - task.elapsed()))
        try:
            status = await self._send_webhook(task)
        except (_NoWebhook, httpx.HTTPError) as exc:
            logger.warning("emulated PiAPI webhook of task %s not sent: %r", task.id, exc)
        else:
            logger.debug("emulated PiAPI webhook of task %s: HTTP %d", task.id, status)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        if self.closed:
            coroutine.close()
            raise RuntimeError("the emulator is closed")
        task = asyncio.create_task(coroutine)
        self.background.add(task)
        task.add_done_callback(self._reap)

    def _reap(self, task: asyncio.Task[None]) -> None:
        self.background.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("emulator background task failed", exc_info=exc)

    async def aclose(self) -> None:
        """Cancel the webhook timers and wait for them; no more are started."""
        self.closed = True
        tasks = list(self.background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
