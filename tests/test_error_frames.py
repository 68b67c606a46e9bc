"""Error events carry ``retryable`` and the upstream's ``retry_after`` into every dialect that has room (API.md §1)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import websockets

from tests.sse_client import Frame, read_all


def error_of(dialect: str, frames: list[Frame]) -> dict[str, Any]:
    bodies = [f.json() for f in frames if f.data != "[DONE]"]
    match dialect:
        case "native" | "text":
            return next(f.json() for f in frames if f.event == "error")
        case "status":
            return next(b for b in bodies if b["status"] == "error")
        case "tanstack":
            return dict(next(b for b in bodies if b["type"] == "error")["error"])
        case "openai":
            return dict(next(b for b in bodies if "error" in b)["error"])
        case _:
            run_error = next(b for b in bodies if b["type"] == "RUN_ERROR")
            return {"type": run_error["code"], **run_error["metadata"]}


@pytest.mark.parametrize("dialect", ["native", "text", "status", "tanstack", "agui", "openai"])
async def test_a_rate_limit_says_it_is_retryable_and_when(gateway: str, dialect: str) -> None:
    async with httpx.AsyncClient(base_url=gateway) as client:
        started = await client.post("/api/claude/prompt/async", json={"prompt": "[emu:fault=429] [emu:retry_after=3]"})
        task_id = started.json()["task_id"]
        error = error_of(dialect, await read_all(client, f"/api/claude/subscribe/{task_id}?format={dialect}"))
    assert error["retryable"] is True and error["retry_after"] == 3


async def test_an_auth_failure_is_not_retryable_on_sse_and_websocket(gateway: str) -> None:
    async with httpx.AsyncClient(base_url=gateway) as client:
        task_id = (await client.post("/api/claude/prompt/async", json={"prompt": "[emu:fault=401]"})).json()["task_id"]
        frames = await read_all(client, f"/api/claude/subscribe/{task_id}")
    error = error_of("native", frames)
    assert error["type"] == "upstream_auth" and error["retryable"] is False and "retry_after" not in error
    async with websockets.connect(gateway.replace("http", "ws") + f"/api/claude/ws/{task_id}") as ws:
        messages = [json.loads(m) async for m in ws]
    assert messages[-1]["event"] == "error" and messages[-1]["data"]["retryable"] is False
