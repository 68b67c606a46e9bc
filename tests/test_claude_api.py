"""Claude task endpoints end to end: uvicorn serving the gateway, which calls the emulator through the SDK."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import msgspec
import pytest
import websockets

from llm_gateway.emulator import emulated_deltas, emulated_text, emulated_tool_id, emulated_tool_input
from llm_gateway.store import parse_event_id
from tests.conftest import UPSTREAM_FAULTS, Emulator, GatewayFactory
from tests.sse_client import Frame, frames, read_all


def chunks(frames_: list[Frame]) -> str:
    return "".join(f.json()["chunk"] for f in frames_ if f.event == "chunk")


def assert_ids_strictly_increase(frames_: list[Frame]) -> None:
    ids = [parse_event_id(f.id) for f in frames_ if f.id is not None]
    assert all(f.id is not None for f in frames_), "every frame carries an id"
    assert ids == sorted(set(ids))


async def start_task(client: httpx.AsyncClient, body: Mapping[str, object]) -> str:
    response = await client.post("/api/claude/prompt/async", json=body)
    assert response.status_code == 202, response.text
    task_id: str = response.json()["task_id"]
    assert response.json()["stream_url"] == f"/api/claude/subscribe/{task_id}"
    return task_id


async def test_prompt_waits_for_the_answer(gateway: str) -> None:
    prompt = "Explain quantum computing [emu:deltas=12]"
    async with httpx.AsyncClient(base_url=gateway) as client:
        response = await client.post(
            "/api/claude/prompt",
            json={
                "prompt": prompt,
                "system_prompt": "You are a helpful assistant",
                "max_tokens": 4096,
                "temperature": 0.7,
            },
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["response"] == emulated_text(prompt, 12)
    assert body["stop_reason"] == "end_turn"
    assert body["usage"]["output_tokens"] == 12 and body["usage"]["input_tokens"] > 0
    assert body["model"] == "claude-sonnet-4-6"
    assert response.headers["x-task-id"] == body["task_id"]


async def test_subscribe_streams_native_dialect(gateway: str) -> None:
    prompt = "stream me [emu:deltas=30] [emu:delay_ms=2]"
    async with httpx.AsyncClient(base_url=gateway) as client:
        task_id = await start_task(client, {"prompt": prompt})
        async with client.stream("GET", f"/api/claude/subscribe/{task_id}") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-cache"
            assert response.headers["x-accel-buffering"] == "no"
            assert response.headers["x-task-id"] == task_id
            got = [frame async for frame in frames(response)]
        status = (await client.get(f"/api/claude/task/{task_id}")).json()
    assert got[0].event == "start" and got[0].json() == {"task_id": task_id, "model": "claude-sonnet-4-6"}
    assert [f.json()["chunk"] for f in got if f.event == "chunk"] == emulated_deltas(prompt, 30)
    assert got[-1].event == "complete"
    assert got[-1].json()["response"] == emulated_text(prompt, 30)
    assert_ids_strictly_increase(got)
    assert status["status"] == "completed" and status["result"]["response"] == emulated_text(prompt, 30)
    assert "error" not in status


async def test_resume_with_last_event_id_header_and_query(gateway: str) -> None:
    prompt = "resume me [emu:deltas=20]"
    async with httpx.AsyncClient(base_url=gateway) as client:
        task_id = await start_task(client, {"prompt": prompt})
        full = await read_all(client, f"/api/claude/subscribe/{task_id}")
        middle = full[8].id
        by_header = await read_all(client, f"/api/claude/subscribe/{task_id}", headers={"Last-Event-ID": middle})
        by_query = await read_all(client, f"/api/claude/subscribe/{task_id}?last_event_id={middle}")
        after_the_end = await client.get(
            f"/api/claude/subscribe/{task_id}", headers={"Last-Event-ID": full[-1].id or ""}
        )
    assert [(f.id, f.data) for f in by_header] == [(f.id, f.data) for f in full[9:]]
    assert [(f.id, f.data) for f in by_query] == [(f.id, f.data) for f in full[9:]]
    assert after_the_end.status_code == 204, "EventSource stops reconnecting on 204"


async def test_a_task_evicted_from_a_full_embedded_store_is_gone_like_an_expired_one(
    gateway_factory: GatewayFactory,
) -> None:
    async with gateway_factory(store_max_bytes=20_000) as url, httpx.AsyncClient(base_url=url) as client:
        answers = [await client.post("/api/claude/prompt", json={"prompt": f"{i} [emu:deltas=50]"}) for i in range(12)]
        oldest, newest = answers[0].json()["task_id"], answers[-1].json()["task_id"]
        oldest_status = await client.get(f"/api/claude/task/{oldest}")
        oldest_stream = await client.get(f"/api/claude/subscribe/{oldest}")
        replay = await read_all(client, f"/api/claude/subscribe/{newest}")
    assert oldest_status.status_code == 404 and oldest_status.json()["type"] == "not_found"
    assert oldest_stream.status_code == 404
    assert chunks(replay) == emulated_text("11 [emu:deltas=50]", 50) and replay[-1].event == "complete"


@pytest.fixture(params=["memory", "redis"])
async def gateway_on_each_store(request: pytest.FixtureRequest, gateway_factory: GatewayFactory) -> AsyncIterator[str]:
    redis: dict[str, str] = {}
    if request.param == "redis":
        redis = {"redis_url": request.getfixturevalue("redis_url"), "redis_key_prefix": f"end:{uuid.uuid4().hex[:8]}:"}
    async with gateway_factory(**redis) as url:
        yield url


def next_id(event_id: str) -> str:
    ms, seq = parse_event_id(event_id)
    return f"{ms}-{seq + 1}"


async def ws_messages(url: str) -> tuple[list[dict[str, Any]], int | None]:
    """Every message until the server closes the socket, and its close code."""
    messages = []
    async with asyncio.timeout(10), websockets.connect(url) as ws:
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                messages.append(json.loads(await ws.recv()))
    return messages, ws.close_code


async def test_resuming_beyond_the_end_of_a_finished_log_is_a_400(gateway_on_each_store: str) -> None:
    url = gateway_on_each_store
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        task_id = await start_task(client, {"prompt": "the end [emu:deltas=5]"})
        full = await read_all(client, f"/api/claude/subscribe/{task_id}")
        last = full[-1].id or ""
        at_the_end = await client.get(f"/api/claude/subscribe/{task_id}", headers={"Last-Event-ID": last})
        by_header = await client.get(f"/api/claude/subscribe/{task_id}", headers={"Last-Event-ID": next_id(last)})
        by_query = await client.get(f"/api/claude/subscribe/{task_id}?last_event_id={next_id(last)}&format=text")
        real = await read_all(client, f"/api/claude/subscribe/{task_id}", headers={"Last-Event-ID": full[2].id or ""})
    ws_base = f"{url.replace('http://', 'ws://')}/api/claude/ws/{task_id}"
    ws_at_the_end, ws_at_the_end_code = await ws_messages(f"{ws_base}?after={last}")
    ws_beyond, ws_beyond_code = await ws_messages(f"{ws_base}?after={next_id(last)}")
    assert at_the_end.status_code == 204, "resuming at the last id is valid: nothing more to send"
    for refused in (by_header, by_query):
        assert refused.status_code == 400 and refused.json()["type"] == "invalid_request", refused.text
    assert [(f.id, f.data) for f in real] == [(f.id, f.data) for f in full[3:]]
    assert ws_at_the_end == [] and ws_at_the_end_code == 1000
    assert [m["data"]["type"] for m in ws_beyond] == ["invalid_request"] and ws_beyond_code == 4400


async def test_resuming_beyond_the_end_of_a_running_log_is_a_400_not_a_wait(gateway_on_each_store: str) -> None:
    url = gateway_on_each_store
    prompt = "still going [emu:deltas=100] [emu:delay_ms=20]"
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        task_id = await start_task(client, {"prompt": prompt})
        async with client.stream("GET", f"/api/claude/subscribe/{task_id}") as response:
            seen = []
            async for frame in frames(response):
                seen.append(frame)
                if len(seen) == 3:
                    break
        ms, _ = parse_event_id(seen[-1].id or "")
        future = f"{ms + 3_600_000}-0"
        beyond = await client.get(f"/api/claude/subscribe/{task_id}", headers={"Last-Event-ID": future})
        ws_beyond, ws_beyond_code = await ws_messages(
            f"{url.replace('http://', 'ws://')}/api/claude/ws/{task_id}?after={future}"
        )
        assert (await client.get(f"/api/claude/task/{task_id}")).json()["status"] == "running"
        rest = await read_all(client, f"/api/claude/subscribe/{task_id}", headers={"Last-Event-ID": seen[-1].id or ""})
    assert beyond.status_code == 400 and beyond.json()["type"] == "invalid_request"
    assert [m["data"]["type"] for m in ws_beyond] == ["invalid_request"] and ws_beyond_code == 4400
    assert chunks(seen + rest) == emulated_text(prompt, 100) and rest[-1].event == "complete"


async def test_client_disconnect_does_not_stop_the_task(gateway: str, emulator: Emulator) -> None:
    prompt = "keep going [emu:deltas=40] [emu:delay_ms=5]"
    async with httpx.AsyncClient(base_url=gateway) as client:
        task_id = await start_task(client, {"prompt": prompt})
        async with client.stream("GET", f"/api/claude/subscribe/{task_id}") as response:
            seen = []
            async for frame in frames(response):
                seen.append(frame)
                if len(seen) == 5:
                    break  # the browser goes away mid-stream
        assert (await client.get(f"/api/claude/task/{task_id}")).json()["status"] == "running"
        replay = await read_all(client, f"/api/claude/subscribe/{task_id}")
    assert chunks(replay) == emulated_text(prompt, 40)
    assert replay[-1].event == "complete"
    assert emulator.stats.messages == 1


async def test_queue_with_client_task_id_is_idempotent(gateway: str, emulator: Emulator) -> None:
    body = {"prompt": "same [emu:deltas=3]", "task_id": "my-task.01:a_b"}
    async with httpx.AsyncClient(base_url=gateway) as client:
        first = await client.post("/api/claude/queue", json=body)
        again = await client.post(
            "/api/claude/queue", json={"task_id": "my-task.01:a_b", "prompt": "same [emu:deltas=3]"}
        )
        other = await client.post("/api/claude/queue", json={**body, "prompt": "different"})
        bad_id = await client.post("/api/claude/queue", json={**body, "task_id": "no spaces"})
        replay = await read_all(client, "/api/claude/subscribe/my-task.01:a_b")
    assert first.status_code == 202 and first.json()["task_id"] == "my-task.01:a_b"
    assert first.json()["status"] == "running", "created started: a task that starts at once is running"
    assert again.status_code == 202 and again.json()["task_id"] == "my-task.01:a_b"
    assert other.status_code == 409 and other.json()["type"] == "conflict"
    assert bad_id.status_code == 422 and bad_id.json()["detail"][0]["loc"] == ["body", "task_id"]
    assert chunks(replay) == emulated_text("same [emu:deltas=3]", 3)
    assert emulator.stats.messages == 1


async def test_tool_calls_are_streamed(gateway: str) -> None:
    prompt = "weather in Paris? [emu:tool=get_weather] [emu:deltas=3]"
    tools = [
        {
            "name": "get_weather",
            "description": "Current weather",
            "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}},
        }
    ]
    async with httpx.AsyncClient(base_url=gateway) as client:
        task_id = await start_task(client, {"prompt": prompt, "tools": tools})
        got = await read_all(client, f"/api/claude/subscribe/{task_id}")
    calls = [f.json() for f in got if f.event == "tool_call"]
    assert {c["id"] for c in calls} == {emulated_tool_id(prompt)} and {c["name"] for c in calls} == {"get_weather"}
    assert json.loads("".join(c["args_delta"] for c in calls)) == emulated_tool_input(prompt)
    assert got[-1].json()["stop_reason"] == "tool_use"


async def test_websocket_replay_and_resume(gateway: str) -> None:
    prompt = "over a socket [emu:deltas=10]"
    ws_base = gateway.replace("http://", "ws://")
    async with httpx.AsyncClient(base_url=gateway) as client:
        task_id = await start_task(client, {"prompt": prompt})
    async with asyncio.timeout(10):
        async with websockets.connect(f"{ws_base}/api/claude/ws/{task_id}") as ws:
            messages = [json.loads(m) async for m in ws]
        assert messages[0]["event"] == "start" and messages[-1]["event"] == "complete"
        assert "".join(m["data"]["chunk"] for m in messages if m["event"] == "chunk") == emulated_text(prompt, 10)
        async with websockets.connect(f"{ws_base}/api/claude/ws/{task_id}?after={messages[4]['id']}") as ws:
            rest = [json.loads(m) async for m in ws]
        assert rest == messages[5:]
        async with websockets.connect(f"{ws_base}/api/claude/ws/unknown-task") as ws:
            error = json.loads(await ws.recv())
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
        assert error["data"]["type"] == "not_found" and ws.close_code == 4404


async def test_cancel_a_running_task(gateway: str) -> None:
    async with httpx.AsyncClient(base_url=gateway) as client:
        task_id = await start_task(client, {"prompt": "slow [emu:deltas=500] [emu:delay_ms=20]"})
        await asyncio.sleep(0.2)
        cancelled = await client.delete(f"/api/claude/task/{task_id}")
        got = await read_all(client, f"/api/claude/subscribe/{task_id}")
        status = (await client.get(f"/api/claude/task/{task_id}")).json()
        again = await client.delete(f"/api/claude/task/{task_id}")
        unknown = await client.delete("/api/claude/task/nope")
    assert cancelled.status_code == 202
    assert got[-1].event == "error" and got[-1].json()["type"] == "cancelled"
    assert status["status"] == "cancelled" and status["error"]["type"] == "cancelled"
    assert again.status_code == 409 and again.json()["type"] == "conflict"
    assert unknown.status_code == 404


@pytest.mark.parametrize(("fault", "status", "error_type", "retry_after"), UPSTREAM_FAULTS)
async def test_upstream_faults(gateway: str, fault: str, status: int, error_type: str, retry_after: str | None) -> None:
    prompt = f"fault [emu:fault={fault}] [emu:retry_after=7] [emu:deltas=10]"
    async with httpx.AsyncClient(base_url=gateway) as client:
        sync = await client.post("/api/claude/prompt", json={"prompt": prompt})
        task_id = await start_task(client, {"prompt": prompt})
        got = await read_all(client, f"/api/claude/subscribe/{task_id}")
        task = (await client.get(f"/api/claude/task/{task_id}")).json()
    assert sync.status_code == status, sync.text
    assert sync.json()["type"] == error_type and sync.json()["success"] is False
    assert sync.headers.get("retry-after") == retry_after
    assert "sk-ant" not in sync.text
    assert got[-1].event == "error" and got[-1].json()["type"] == error_type
    assert task["status"] == "failed" and task["error"]["type"] == error_type


async def test_upstream_stall_ends_upstream_timeout(gateway_factory: GatewayFactory) -> None:
    async with gateway_factory(upstream_idle_timeout=0.3) as url, httpx.AsyncClient(base_url=url) as client:
        task_id = await start_task(client, {"prompt": "stall [emu:fault=stall] [emu:after=2]"})
        got = await read_all(client, f"/api/claude/subscribe/{task_id}")
        task = (await client.get(f"/api/claude/task/{task_id}")).json()
    assert len([f for f in got if f.event == "chunk"]) == 2
    assert got[-1].json()["type"] == "upstream_timeout"
    assert task["status"] == "failed" and task["error"]["type"] == "upstream_timeout"


@pytest.mark.parametrize(
    ("body", "status", "loc"),
    [
        (b"{not json", 400, None),
        (b"[]", 422, None),
        (b"{}", 422, ["body", "prompt"]),
        (b'{"prompt": ""}', 422, ["body", "prompt"]),
        (b'{"prompt": "   "}', 422, ["body", "prompt"]),
        (b'{"prompt": 5}', 422, ["body", "prompt"]),
        (b'{"prompt": "hi", "max_tokens": "many"}', 422, ["body", "max_tokens"]),
        (b'{"prompt": "hi", "max_tokens": 0}', 422, ["body", "max_tokens"]),
        (b'{"prompt": "hi", "temperature": 1.5}', 422, ["body", "temperature"]),
        (b'{"prompt": "hi", "messages": [{"role": "robot", "content": "x"}]}', 422, ["body", "messages", "0", "role"]),
        (b'{"prompt": "hi", "tools": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, None),
    ],
)
async def test_bad_input_gets_the_error_shape(gateway: str, body: bytes, status: int, loc: list[str] | None) -> None:
    async with httpx.AsyncClient(base_url=gateway) as client:
        response = await client.post("/api/claude/prompt/async", content=body)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["success"] is False and error["type"] == "invalid_request" and error["timestamp"]
    if loc is not None:
        assert loc in [item["loc"] for item in error["detail"]]


async def test_every_bad_field_is_listed(gateway: str) -> None:
    async with httpx.AsyncClient(base_url=gateway) as client:
        response = await client.post("/api/claude/prompt", json={"prompt": 1, "max_tokens": -1, "temperature": "hot"})
    locs = [item["loc"] for item in response.json()["detail"]]
    assert locs == [["body", "prompt"], ["body", "max_tokens"], ["body", "temperature"]]


async def test_oversized_body_is_413(gateway_factory: GatewayFactory) -> None:
    async with gateway_factory(max_body_bytes=1000) as url, httpx.AsyncClient(base_url=url) as client:
        declared = await client.post("/api/claude/prompt", json={"prompt": "x" * 2000})

        async def chunked() -> AsyncIterator[bytes]:
            for _ in range(5):
                yield b"x" * 400

        streamed = await client.post("/api/claude/prompt", content=chunked())
    assert declared.status_code == 413 and declared.json()["type"] == "payload_too_large"
    assert streamed.status_code == 413 and streamed.json()["type"] == "payload_too_large"


async def test_unknown_task_and_malformed_last_event_id(gateway: str) -> None:
    async with httpx.AsyncClient(base_url=gateway) as client:
        task_id = await start_task(client, {"prompt": "x [emu:deltas=1]"})
        missing = await client.get("/api/claude/task/nope")
        missing_stream = await client.get("/api/claude/subscribe/nope")
        malformed = await client.get(f"/api/claude/subscribe/{task_id}", headers={"Last-Event-ID": "yesterday"})
        bad_format = await client.get(f"/api/claude/subscribe/{task_id}?format=klingon")
        unknown_path = await client.get("/api/nothing-here")
        wrong_method = await client.put("/api/claude/prompt")
    assert missing.status_code == 404 and missing.json()["type"] == "not_found"
    assert missing_stream.status_code == 404
    assert malformed.status_code == 400 and malformed.json()["type"] == "invalid_request"
    assert bad_format.status_code == 400
    assert unknown_path.status_code == 404 and unknown_path.json()["success"] is False
    assert wrong_method.status_code == 405 and wrong_method.json()["type"] == "invalid_request"


async def test_concurrency_cap_answers_503(gateway_factory: GatewayFactory) -> None:
    async with gateway_factory(max_concurrent_tasks=2) as url, httpx.AsyncClient(base_url=url) as client:
        body = {"prompt": "slow [emu:deltas=200] [emu:delay_ms=10]"}
        first, second = await start_task(client, body), await start_task(client, body)
        over = await client.post("/api/claude/prompt/async", json=body)
        for task_id in (first, second):
            await client.delete(f"/api/claude/task/{task_id}")
    assert over.status_code == 503 and over.json()["type"] == "unavailable"
    assert over.headers["retry-after"] == "1"


async def test_client_api_keys(gateway_factory: GatewayFactory) -> None:
    async with gateway_factory(gateway_api_keys="k-one,k-two") as url, httpx.AsyncClient(base_url=url) as client:
        health = await client.get("/health")
        anonymous = await client.post("/api/claude/prompt/async", json={"prompt": "x"})
        wrong = await client.get("/api/claude/task/x", headers={"Authorization": "Bearer nope"})
        bearer = await client.get("/api/claude/task/x", headers={"Authorization": "Bearer k-two"})
        header = await client.get("/api/claude/task/x", headers={"X-API-Key": "k-one"})
        ws_base = url.replace("http://", "ws://")
        with pytest.raises(websockets.InvalidStatus):
            async with websockets.connect(f"{ws_base}/api/claude/ws/x"):
                pass
    assert health.status_code == 200
    assert anonymous.status_code == 401 and anonymous.json()["type"] == "unauthorized"
    assert wrong.status_code == 401
    assert bearer.status_code == 404 and header.status_code == 404  # authorised; the task just doesn't exist


async def test_client_keys_in_websocket_urls_stay_out_of_logs(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from llm_gateway.app import RedactKeysFilter

    record = logging.LogRecord(
        "uvicorn.error",
        logging.INFO,
        "",
        0,
        '%s - "WebSocket %s" [accepted]',
        ("127.0.0.1:5", "/api/claude/ws/t?after=1-0&api_key=s3cr3t-client-key"),
        None,
    )
    assert RedactKeysFilter().filter(record)
    assert "s3cr3t" not in record.getMessage() and "api_key=***" in record.getMessage()


async def test_info_health_and_auth_status(gateway: str) -> None:
    async with httpx.AsyncClient(base_url=gateway) as client:
        index = (await client.get("/")).json()
        health = await client.get("/health")
        auth = (await client.get("/auth-status")).json()
    assert index["name"] == "llm-gateway" and "POST /api/claude/prompt" in index["endpoints"]
    assert health.status_code == 200 and health.json()["status"] == "healthy"
    assert health.json()["claude_client"] == "initialized" and health.json()["auth_type"] == "api_key"
    assert health.json()["providers"] == {"claude": True, "openai": False, "cerebras": False, "gemini": False}
    assert auth["authenticated"] is True and auth["api_key"].startswith("sk-ant-") and "…" in auth["api_key"]
    assert "0123456789abcdefghij" not in json.dumps(auth)


async def test_store_down_is_503_not_500(gateway_factory: GatewayFactory) -> None:
    async with gateway_factory(redis_url="redis://127.0.0.1:1/0") as url, httpx.AsyncClient(base_url=url) as client:
        health = await client.get("/health")
        answers = [
            await client.post("/api/claude/prompt/async", json={"prompt": "x"}),
            await client.get("/api/claude/task/t"),
            await client.get("/api/claude/subscribe/t"),
            await client.delete("/api/claude/task/t"),
        ]
    assert health.status_code == 503 and health.json()["store"]["reachable"] is False
    for answer in answers:
        assert answer.status_code == 503 and answer.json()["type"] == "unavailable", answer.text
        assert answer.headers["retry-after"] == "1"


async def test_unconfigured_upstream_is_503(emulator: Emulator) -> None:
    from llm_gateway.app import create_app
    from tests.conftest import gateway_settings
    from tests.servers import serve

    settings = msgspec.structs.replace(gateway_settings(emulator.url), anthropic_api_key=None)
    async with serve(create_app(settings)) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/api/claude/prompt", json={"prompt": "x"})
        health = (await client.get("/health")).json()
    assert response.status_code == 503 and response.json()["type"] == "unavailable"
    assert health["claude_client"] == "not configured"


async def test_oauth_token_is_sent_as_bearer(emulator: Emulator) -> None:
    from llm_gateway.app import create_app
    from tests.conftest import EMULATOR_KEY, gateway_settings
    from tests.servers import serve

    settings = msgspec.structs.replace(
        gateway_settings(emulator.url), anthropic_api_key=None, anthropic_auth_token=EMULATOR_KEY
    )
    async with serve(create_app(settings)) as url, httpx.AsyncClient(base_url=url) as client:
        answer = await client.post("/api/claude/prompt", json={"prompt": "token [emu:deltas=3]"})
        auth = (await client.get("/auth-status")).json()
    assert answer.status_code == 200, answer.text
    assert answer.json()["response"] == emulated_text("token [emu:deltas=3]", 3)
    assert auth["auth_type"] == "oauth_token" and auth["api_key"] is None and "…" in auth["auth_token"]
