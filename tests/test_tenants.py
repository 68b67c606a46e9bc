"""Tenants over two replica processes on one Redis: each sees only its own work, and its limits hold cluster-wide."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import pytest
import websockets

from llm_gateway.config import ConfigError, from_env
from llm_gateway.tenants import parse_keys, public, scoped
from tests.conftest import EMULATOR_KEY, Emulator
from tests.servers import replica_process
from tests.sse_client import read_all
from tests.test_trellis import create_body

A = {"Authorization": "Bearer key-a"}
B = {"X-API-Key": "key-b"}
SLOW = "[emu:deltas=400] [emu:delay_ms=10]"


def test_keys_name_their_tenants() -> None:
    tenants = parse_keys("acme=k1, k2 ,acme=k3")
    assert tenants["k1"] == tenants["k3"] == "acme" and tenants["k2"].startswith("k") and tenants["k2"] != "acme"
    assert parse_keys("k2") == {"k2": tenants["k2"]}, "a bare key is the same tenant on every replica"
    with pytest.raises(ConfigError, match="GATEWAY_API_KEYS entry 2"):
        from_env({"GATEWAY_API_KEYS": "a=1,b/c=2"}, env_file=None)
    assert scoped("acme", "haiku-1") == "acme/haiku-1" and public("acme/haiku-1") == "haiku-1"
    assert scoped("", "haiku-1") == "haiku-1"


@asynccontextmanager
async def two_replicas(env: dict[str, str], **settings: str) -> AsyncIterator[tuple[str, str]]:
    tenants_env = {
        **env,
        "GATEWAY_API_KEYS": "ka=key-a,kb=key-b",
        "TRELLIS_API_KEY": EMULATOR_KEY,
        "TRELLIS_BASE_URL": env["ANTHROPIC_BASE_URL"],
        "TRELLIS_POLL_INTERVAL": "0.2",
        **settings,
    }
    async with AsyncExitStack() as stack:
        one, _ = await stack.enter_async_context(replica_process(tenants_env))
        two, _ = await stack.enter_async_context(replica_process(tenants_env))
        yield one, two


async def start(client: httpx.AsyncClient, url: str, headers: dict[str, str], **body: Any) -> httpx.Response:
    return await client.post(f"{url}/api/claude/prompt/async", json={"prompt": SLOW, **body}, headers=headers)


async def ws_close(url: str, path: str, key: str) -> tuple[list[Any], int | None]:
    messages: list[Any] = []
    async with websockets.connect(url.replace("http", "ws") + f"{path}?api_key={key}") as ws:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for message in ws:
                messages.append(json.loads(message))
        return messages, ws.close_code


async def test_another_tenant_gets_what_a_never_existing_id_gets(replica_env: dict[str, str]) -> None:
    async with two_replicas(replica_env) as (one, two), httpx.AsyncClient(timeout=30) as client:
        started = await start(client, one, A, task_id="haiku-1")
        assert started.status_code == 202 and started.json()["task_id"] == "haiku-1"
        never = "no-such-task"
        for url in (one, two):
            for task_id in ("haiku-1", never):
                status = await client.get(f"{url}/api/claude/task/{task_id}", headers=B)
                stream = await client.get(f"{url}/api/claude/subscribe/{task_id}", headers=B)
                cancel = await client.delete(f"{url}/api/claude/task/{task_id}", headers=B)
                for response in (status, stream, cancel):
                    assert response.status_code == 404 and response.json()["type"] == "not_found"
                    assert "ka" not in response.text
            got, code = await ws_close(url, "/api/claude/ws/haiku-1", "key-b")
            assert code == 4404 and got[0]["data"]["type"] == "not_found"
        # B's own haiku-1 is another task: no 409, no sign that A's exists.
        mine = await start(client, two, B, task_id="haiku-1", prompt="B's own [emu:deltas=3]")
        assert mine.status_code == 202 and mine.json()["task_id"] == "haiku-1"
        # A's task was never cancelled by B, and A reads its whole answer from the other replica.
        frames = await read_all(client, f"{two}/api/claude/subscribe/haiku-1", headers=A)
        assert frames[-1].event == "complete" and frames[0].json()["task_id"] == "haiku-1", frames[-1].data
        b_frames = await read_all(client, f"{one}/api/claude/subscribe/haiku-1", headers=B)
        assert b_frames[-1].json()["response"] != frames[-1].json()["response"]


async def test_conversations_runs_and_cached_answers_are_per_tenant(
    replica_env: dict[str, str], emulator: Emulator
) -> None:
    async with two_replicas(replica_env) as (one, two), httpx.AsyncClient(timeout=30) as client:
        first = await client.post(f"{one}/api/chat", json={"message": "A's secret plan"}, headers=A)
        conversation_id = first.json()["conversation_id"]
        turn = await client.post(
            f"{two}/api/chat", json={"message": "B's turn", "conversation_id": conversation_id}, headers=B
        )
        assert turn.status_code == 200 and turn.json()["conversation_id"] == conversation_id
        sent = json.loads(emulator.stats.bodies[-1])["messages"]
        assert sent == [{"role": "user", "content": "B's turn"}], "B starts afresh; A's history never reaches it"
        again = await client.post(
            f"{one}/api/chat", json={"message": "A again", "conversation_id": conversation_id}, headers=A
        )
        assert again.status_code == 200
        history = json.dumps(json.loads(emulator.stats.bodies[-1])["messages"])
        assert "A's secret plan" in history and "B's turn" not in history

        run = {"threadId": "t", "runId": "run-1", "messages": [{"id": "u", "role": "user", "content": "hi"}]}
        await _post_sse(client, f"{one}/chat", run, A)
        joined = await client.get(f"{two}/chat?runId=run-1&offset=-1", headers=B)
        assert joined.status_code == 404 and joined.json()["type"] == "not_found"

        emulator.stats.reset()
        question = {"question": "What is Python?"}
        for url, headers in ((one, A), (two, A), (one, B)):
            await _post_sse(client, f"{url}/chat", question, headers)
        assert emulator.stats.messages == 2, "A's second ask is a hit; B's ask is B's own"


async def _post_sse(client: httpx.AsyncClient, url: str, body: dict[str, Any], headers: dict[str, str]) -> str:
    async with client.stream("POST", url, json=body, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        return "".join([line async for line in response.aiter_lines()])


async def test_trellis_tasks_are_per_tenant(replica_env: dict[str, str], emulator: Emulator) -> None:
    async with two_replicas(replica_env) as (one, two), httpx.AsyncClient(timeout=30) as client:
        created = await client.post(f"{one}/api/trellis/task", json=create_body(), headers=A)
        task_id = created.json()["data"]["task_id"]
        gets_before = emulator.stats.piapi_gets_by_task.get(task_id, 0)
        mine = await client.get(f"{two}/api/trellis/task/{task_id}", headers=A)
        theirs = await client.get(f"{two}/api/trellis/task/{task_id}", headers=B)
        events = await client.get(f"{one}/api/trellis/task/{task_id}/events", headers=B)
        got, _ = await ws_close(two, f"/api/trellis/task/ws/{task_id}", "key-b")
        assert mine.status_code == 200
        assert theirs.status_code == 404 and events.status_code == 404
        assert got[0]["status"] == "error" and "not found" in got[0]["message"]
        assert emulator.stats.piapi_gets_by_task.get(task_id, 0) - gets_before <= 1, "B's asks never reach PiAPI"
        climb = await client.get(f"{one}/api/trellis/task/..", headers=A)
        assert climb.status_code == 404


async def test_tenant_limits_hold_across_replicas(replica_env: dict[str, str]) -> None:
    async with two_replicas(replica_env, TENANT_MAX_CONCURRENT="1") as (one, two), httpx.AsyncClient() as client:
        first = await start(client, one, A)
        second = await start(client, two, A)
        other = await start(client, two, B)
        assert first.status_code == 202 and other.status_code == 202
        assert second.status_code == 429 and second.json()["type"] == "rate_limited"
        assert int(second.headers["retry-after"]) >= 1
        await read_all(client, f"{one}/api/claude/subscribe/{first.json()['task_id']}", headers=A)
        async with asyncio.timeout(10):
            while (again := await start(client, two, A, prompt="[emu:deltas=2]")).status_code == 429:
                await asyncio.sleep(0.1)  # the slot is given back once the first task's end is written
        assert again.status_code == 202

    async with two_replicas(replica_env, TENANT_RPM="4") as (one, two), httpx.AsyncClient() as client:
        if (second_of_minute := time.time() % 60) > 55:
            await asyncio.sleep(60.5 - second_of_minute)  # all six requests in one clock minute
        answers = [await client.get(f"{url}/api/claude/task/x", headers=A) for url in (one, two, one, two)]
        over = await client.get(f"{one}/api/claude/task/x", headers=A)
        ws_over, code = await ws_close(two, "/api/claude/ws/x", "key-a")
        b_ok = await client.get(f"{two}/api/claude/task/x", headers=B)
        assert [a.status_code for a in answers] == [404] * 4
        assert over.status_code == 429 and over.json()["type"] == "rate_limited"
        assert 1 <= int(over.headers["retry-after"]) <= 60
        assert code == 1013 and ws_over[0]["type"] == "rate_limited" and ws_over[0]["retry_after"] > 0
        assert b_ok.status_code == 404, "B's minute is its own"
