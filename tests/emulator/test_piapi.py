"""The emulated PiAPI task API (Trellis), over real loopback HTTP: progression by time, faults, counters, webhooks."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llm_gateway.emulator import EmulatorStats, create_emulator_app, piapi_model_url
from tests.processes import free_port
from tests.servers import serve

KEY = "piapi-test-key"
UNSET = "0001-01-01T00:00:00Z"


def task_body(emulator: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "Qubico/trellis",
        "task_type": "image-to-3d",
        "input": {"image": "https://example.test/chair.png", "seed": 0},
        **extra,
    }
    if emulator is not None:
        body["emulator"] = emulator
    return body


@pytest.fixture
def app() -> Starlette:
    return create_emulator_app(api_key=KEY)


@pytest.fixture
def stats(app: Starlette) -> EmulatorStats:
    stats = app.state.stats
    assert isinstance(stats, EmulatorStats)
    return stats


@pytest.fixture
async def http(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(app) as url, httpx.AsyncClient(base_url=url, headers={"x-api-key": KEY}) as http:
        yield http


async def create(http: httpx.AsyncClient, emulator: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    response = await http.post("/api/v1/task", json=task_body(emulator, **extra))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["code"] == 200 and body["message"] == "success"
    data: dict[str, Any] = body["data"]
    return data


async def get(http: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    response = await http.get(f"/api/v1/task/{task_id}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["code"] == 200 and body["message"] == "success"
    data: dict[str, Any] = body["data"]
    return data


async def sleep_until(start: float, offset: float) -> None:
    await asyncio.sleep(max(0.0, start + offset - time.monotonic()))


# --- create, progression, outcome ------------------------------------------------------------------------------


async def test_create_answers_a_pending_task_in_piapis_shape(http: httpx.AsyncClient) -> None:
    config = {"webhook_config": {"endpoint": "https://gw.example/hooks/piapi", "secret": "s3cr3t"}}
    data = await create(http, config=config)
    assert uuid.UUID(data["task_id"]).version == 4
    meta = data.pop("meta")
    assert data == {
        "task_id": data["task_id"],
        "model": "Qubico/trellis",
        "task_type": "image-to-3d",
        "status": "pending",
        # the secret is blanked, as in PiAPI's example response
        "config": {"service_mode": "", "webhook_config": {"endpoint": "https://gw.example/hooks/piapi", "secret": ""}},
        "input": {"image": "https://example.test/chair.png", "seed": 0},
        "output": None,
        "detail": None,
        "logs": [],
        "error": {"code": 0, "raw_message": "", "message": "", "detail": None},
    }
    assert time.strptime(meta.pop("created_at"), "%Y-%m-%dT%H:%M:%SZ")
    assert meta == {
        "started_at": UNSET,
        "ended_at": UNSET,
        "usage": {"type": "llm", "frozen": 0, "consume": 400000},
        "is_using_private_pool": False,
    }
    # text-to-3d with a prompt, and no config at all
    data = await create(http, task_type="text-to-3d", input={"prompt": "a chair"})
    assert data["input"] == {"prompt": "a chair"} and data["task_type"] == "text-to-3d"
    assert data["config"] == {"service_mode": "", "webhook_config": {"endpoint": "", "secret": ""}}


async def test_status_follows_elapsed_time_through_staged_to_completed(http: httpx.AsyncClient) -> None:
    start = time.monotonic()
    options = {"pending_s": 0.2, "staged": True, "staged_s": 0.2, "processing_s": 0.2}
    task_id = (await create(http, options))["task_id"]
    seen = []
    for offset in (0.1, 0.3, 0.5, 0.7):
        await sleep_until(start, offset)
        data = await get(http, task_id)
        seen.append(data["status"])
    assert seen == ["pending", "staged", "processing", "completed"]
    assert data["output"] == {
        "model_file": piapi_model_url(task_id),
        "combined_video": f"https://img.theapi.app/temp/{task_id}/combined_video.mp4",
        "no_background_image": f"https://img.theapi.app/temp/{task_id}/no_background_image.png",
    }
    assert piapi_model_url(task_id) == f"https://img.theapi.app/temp/{task_id}/model.glb"
    assert data["meta"]["started_at"] != UNSET and data["meta"]["ended_at"] != UNSET
    assert data["meta"]["started_at"] <= data["meta"]["ended_at"]
    assert data["error"]["code"] == 0 and "progress" not in data["meta"]


async def test_without_staged_pending_goes_straight_to_processing(http: httpx.AsyncClient) -> None:
    start = time.monotonic()
    task_id = (await create(http, {"pending_s": 0.15, "processing_s": 0.2}))["task_id"]
    seen = []
    for offset in (0.05, 0.25, 0.45):
        await sleep_until(start, offset)
        data = await get(http, task_id)
        seen.append((data["status"], data["meta"]["started_at"] != UNSET, data["meta"]["ended_at"] != UNSET))
    assert seen == [("pending", False, False), ("processing", True, False), ("completed", True, True)]


async def test_failed_outcome_carries_piapis_error(http: httpx.AsyncClient) -> None:
    task_id = (await create(http, {"pending_s": 0, "processing_s": 0, "outcome": "failed"}))["task_id"]
    data = await get(http, task_id)
    assert data["status"] == "failed" and data["output"] is None
    assert data["error"] == {
        "code": 10000,
        "raw_message": "trellis failed: bad image",
        "message": "bad image",
        "detail": None,
    }
    assert data["meta"]["ended_at"] != UNSET


async def test_progress_rises_in_steps_at_meta_progress(http: httpx.AsyncClient) -> None:
    start = time.monotonic()
    task_id = (await create(http, {"pending_s": 0.1, "processing_s": 0.8, "progress_steps": 4}))["task_id"]
    seen = []
    for offset in (0.05, 0.2, 0.4, 0.6, 0.8, 1.0):
        await sleep_until(start, offset)
        data = await get(http, task_id)
        seen.append((data["status"], data["meta"]["progress"]))
    assert seen == [
        ("pending", 0),
        ("processing", 0),
        ("processing", 25),
        ("processing", 50),
        ("processing", 75),
        ("completed", 100),
    ]


# --- errors ----------------------------------------------------------------------------------------------------


async def test_wrong_or_missing_key_is_401(http: httpx.AsyncClient) -> None:
    task_id = (await create(http))["task_id"]
    unauthorized = {"code": 401, "message": "Unauthorized", "data": None}
    for headers in ({"x-api-key": "nope"}, {"x-api-key": "", "authorization": f"Bearer {KEY}"}):
        response = await http.post("/api/v1/task", json=task_body(), headers=headers)
        assert response.status_code == 401 and response.json() == unauthorized
        response = await http.get(f"/api/v1/task/{task_id}", headers=headers)
        assert response.status_code == 401 and response.json() == unauthorized


async def test_no_key_needed_when_the_app_has_none() -> None:
    async with serve(create_emulator_app()) as url, httpx.AsyncClient(base_url=url) as http:
        assert (await get(http, (await create(http))["task_id"]))["status"] == "pending"


@pytest.mark.parametrize(
    "body",
    [
        b"nope",
        b'{"task_type": "image-to-3d", "input": {}}',
        b'{"model": 1, "task_type": "image-to-3d", "input": {}}',
        b'{"model": "Qubico/trellis", "input": {}}',
        b'{"model": "Qubico/trellis", "task_type": "image-to-3d", "input": "chair.png"}',
        b'{"model": "Qubico/trellis", "task_type": "image-to-3d", "input": {}, "emulator": {"outcome": "maybe"}}',
        b'{"model": "Qubico/trellis", "task_type": "image-to-3d", "input": {}, "emulator": {"typo_s": 1}}',
    ],
)
async def test_invalid_create_is_400(http: httpx.AsyncClient, stats: EmulatorStats, body: bytes) -> None:
    response = await http.post("/api/v1/task", content=body)
    assert response.status_code == 400
    error = response.json()
    assert error["code"] == 400 and error["data"] is None and error["message"]
    assert stats.piapi_creates == 1 and stats.bodies[-1] == body


async def test_unknown_task_is_404(http: httpx.AsyncClient) -> None:
    response = await http.get(f"/api/v1/task/{uuid.uuid4()}")
    assert response.status_code == 404
    assert response.json() == {"code": 404, "message": "task not found", "data": None}


# --- faults ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [("500", 500, 500), ("400", 400, 400), ("garbage", 200, None)],
)
async def test_create_faults(
    http: httpx.AsyncClient, stats: EmulatorStats, fault: str, status: int, code: int | None
) -> None:
    response = await http.post("/api/v1/task", json=task_body({"create_fault": fault}))
    assert response.status_code == status
    if code is None:
        assert response.text == "<html>oops" and response.headers["content-type"].startswith("text/html")
    else:
        assert response.json() == {"code": code, "message": response.json()["message"], "data": None}
    assert stats.piapi_creates == 1


async def test_create_timeout_answers_late_or_stops_when_the_client_leaves(app: Starlette) -> None:
    begin = time.monotonic()
    async with serve(app) as url, httpx.AsyncClient(base_url=url, headers={"x-api-key": KEY}) as http:
        start = time.monotonic()
        data = await create(http, {"create_fault": "timeout", "timeout_s": 0.2})
        assert time.monotonic() - start >= 0.2 and data["status"] == "pending"

        with pytest.raises(httpx.ReadTimeout):  # the default 30 s, and a client that gives up first
            await http.post("/api/v1/task", json=task_body({"create_fault": "timeout"}), timeout=0.2)
        assert app.state.stats.piapi_creates == 2
    # uvicorn would wait timeout_graceful_shutdown (1 s) for a handler still sleeping
    assert time.monotonic() - begin < 0.9


async def test_get_fault_count_then_recovery(http: httpx.AsyncClient) -> None:
    options = {"pending_s": 0, "processing_s": 0, "get_fault": "500", "get_fault_count": 2}
    task_id = (await create(http, options))["task_id"]
    for _ in range(2):
        response = await http.get(f"/api/v1/task/{task_id}")
        assert response.status_code == 500
        assert response.json() == {"code": 500, "message": "internal server error", "data": None}
    assert (await get(http, task_id))["status"] == "completed"
    assert (await get(http, task_id))["status"] == "completed"

    task_id = (await create(http, {"get_fault": "garbage", "get_fault_count": 1}))["task_id"]
    response = await http.get(f"/api/v1/task/{task_id}")
    assert response.status_code == 200 and response.text == "<html>oops"
    assert (await get(http, task_id))["status"] == "pending"


async def test_get_fault_applies_to_every_get_by_default(http: httpx.AsyncClient) -> None:
    task_id = (await create(http, {"get_fault": "500"}))["task_id"]
    for _ in range(4):
        assert (await http.get(f"/api/v1/task/{task_id}")).status_code == 500
    # other tasks are unaffected
    assert (await get(http, (await create(http))["task_id"]))["status"] == "pending"


async def test_get_timeout_is_cancelled_by_the_client_then_recovers(app: Starlette) -> None:
    begin = time.monotonic()
    async with serve(app) as url, httpx.AsyncClient(base_url=url, headers={"x-api-key": KEY}) as http:
        task_id = (await create(http, {"get_fault": "timeout", "get_fault_count": 1}))["task_id"]
        with pytest.raises(httpx.ReadTimeout):
            await http.get(f"/api/v1/task/{task_id}", timeout=0.2)
        start = time.monotonic()
        assert (await get(http, task_id))["status"] == "pending"
        assert time.monotonic() - start < 0.2

        task_id = (await create(http, {"get_fault": "timeout", "timeout_s": 0.1}))["task_id"]
        start = time.monotonic()
        assert (await get(http, task_id))["task_id"] == task_id
        assert time.monotonic() - start >= 0.1
        assert app.state.stats.piapi_gets_by_task[task_id] == 1
    assert time.monotonic() - begin < 0.9


# --- counters --------------------------------------------------------------------------------------------------


async def test_counters_and_per_task_gets(http: httpx.AsyncClient, stats: EmulatorStats) -> None:
    first = (await create(http))["task_id"]
    second = (await create(http, {"get_fault": "500", "get_fault_count": 1}))["task_id"]
    await http.post("/api/v1/task", json=task_body({"create_fault": "500"}))
    for _ in range(3):
        await get(http, first)
    await http.get(f"/api/v1/task/{second}")
    await http.get(f"/api/v1/task/{second}", headers={"x-api-key": "wrong"})
    await http.get("/api/v1/task/nope")
    expected = {"messages": 0, "chat_completions": 0, "piapi_creates": 3, "piapi_gets": 6}
    assert stats.as_dict() == expected
    assert (await http.get("/_emulator/stats")).json() == expected
    assert stats.piapi_gets_by_task == {first: 3, second: 2, "nope": 1}

    await http.post("/_emulator/reset")
    assert stats.as_dict() == {"messages": 0, "chat_completions": 0, "piapi_creates": 0, "piapi_gets": 0}
    assert stats.piapi_gets_by_task == {}
    # a reset clears the counters, not the tasks nor their fault budget
    assert (await get(http, second))["task_id"] == second
    assert stats.piapi_gets_by_task == {second: 1}


# --- webhooks --------------------------------------------------------------------------------------------------


@dataclass
class Receiver:
    url: str
    hooks: asyncio.Queue[tuple[dict[str, str], Any]] = field(default_factory=asyncio.Queue)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A webhook endpoint at ``{url}/hook`` that queues (headers, JSON body) and answers 204."""
    hooks: asyncio.Queue[tuple[dict[str, str], Any]] = asyncio.Queue()

    async def hook(request: Request) -> Response:
        await hooks.put((dict(request.headers), await request.json()))
        return Response(status_code=204)

    async with serve(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as url:
        yield Receiver(f"{url}/hook", hooks)


async def test_webhook_control_endpoint_delivers_the_current_data(http: httpx.AsyncClient, receiver: Receiver) -> None:
    config = {"webhook_config": {"endpoint": receiver.url, "secret": "s3cr3t"}}
    task_id = (await create(http, {"pending_s": 0, "processing_s": 0}, config=config))["task_id"]
    before = int(time.time())
    response = await http.post(f"/_emulator/piapi/{task_id}/webhook", headers={"x-api-key": ""})  # no key needed
    assert response.status_code == 200 and response.json() == {"sent": True, "status": 204}
    headers, body = receiver.hooks.get_nowait()
    assert headers["x-webhook-secret"] == "s3cr3t" and headers["content-type"] == "application/json"
    assert set(body) == {"timestamp", "data"} and before <= body["timestamp"] <= time.time()
    assert body["data"] == await get(http, task_id)
    assert body["data"]["status"] == "completed" and body["data"]["output"]["model_file"] == piapi_model_url(task_id)

    # without a secret, no header
    config = {"webhook_config": {"endpoint": receiver.url}}
    task_id = (await create(http, config=config))["task_id"]
    assert (await http.post(f"/_emulator/piapi/{task_id}/webhook")).json() == {"sent": True, "status": 204}
    headers, body = receiver.hooks.get_nowait()
    assert "x-webhook-secret" not in headers and body["data"]["status"] == "pending"


async def test_webhook_control_endpoint_errors(http: httpx.AsyncClient) -> None:
    response = await http.post(f"/_emulator/piapi/{uuid.uuid4()}/webhook")
    assert response.status_code == 404 and response.json() == {"code": 404, "message": "task not found", "data": None}

    task_id = (await create(http))["task_id"]
    response = await http.post(f"/_emulator/piapi/{task_id}/webhook")
    assert response.status_code == 400 and response.json()["sent"] is False

    config = {"webhook_config": {"endpoint": f"http://127.0.0.1:{free_port()}/hook"}}
    task_id = (await create(http, config=config))["task_id"]
    response = await http.post(f"/_emulator/piapi/{task_id}/webhook")
    assert response.status_code == 502
    body = response.json()
    assert body["sent"] is False and body["error"].startswith("ConnectError")


async def test_webhook_on_finish_fires_without_any_get(
    http: httpx.AsyncClient, stats: EmulatorStats, receiver: Receiver
) -> None:
    config = {"webhook_config": {"endpoint": receiver.url, "secret": "s3cr3t"}}
    options = {"pending_s": 0.05, "processing_s": 0.1, "outcome": "failed", "webhook_on_finish": True}
    start = time.monotonic()
    task_id = (await create(http, options, config=config))["task_id"]
    headers, body = await asyncio.wait_for(receiver.hooks.get(), 1.0)
    assert time.monotonic() - start >= 0.15
    assert headers["x-webhook-secret"] == "s3cr3t"
    assert body["data"]["task_id"] == task_id and body["data"]["status"] == "failed"
    assert body["data"]["error"]["message"] == "bad image"
    assert stats.piapi_gets == 0
    await asyncio.sleep(0.05)
    assert receiver.hooks.empty()


async def test_webhook_timers_are_cancelled_at_shutdown(app: Starlette, receiver: Receiver) -> None:
    config = {"webhook_config": {"endpoint": receiver.url}}
    begin = time.monotonic()
    async with serve(app) as url, httpx.AsyncClient(base_url=url, headers={"x-api-key": KEY}) as http:
        await create(http, {"processing_s": 60, "webhook_on_finish": True}, config=config)
        timers = set(app.state.background_tasks)
        assert len(timers) == 1
    assert all(timer.cancelled() for timer in timers) and not app.state.background_tasks
    assert time.monotonic() - begin < 0.9 and receiver.hooks.empty()
