"""LOG_FORMAT=json: one JSON object a line, with the request id (echoed) and the task id; no prompt, body or key."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import httpx

from tests.conftest import EMULATOR_KEY, Emulator, subprocess_env
from tests.processes import free_port
from tests.sse_client import read_all


async def test_json_logs_carry_ids_and_never_a_secret(emulator: Emulator) -> None:
    port = free_port()
    env = subprocess_env(
        ANTHROPIC_API_KEY=EMULATOR_KEY,
        ANTHROPIC_BASE_URL=emulator.url,
        GATEWAY_API_KEYS="acme=client-key-0123456789",
        LOG_FORMAT="json",
        LOG_LEVEL="debug",
        API_HOST="127.0.0.1",
        API_PORT=str(port),
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "llm_gateway", "--env-file", os.devnull],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            async with asyncio.timeout(20):
                while True:
                    try:
                        if (await client.get("/health")).status_code == 200:
                            break
                    except httpx.TransportError:
                        await asyncio.sleep(0.1)
            key = {"X-API-Key": "client-key-0123456789", "X-Request-Id": "req-42"}
            answer = await client.post(
                "/api/claude/prompt/async", json={"prompt": "SECRET-PROMPT [emu:fault=401]"}, headers=key
            )
            task_id = answer.json()["task_id"]
            await read_all(client, f"/api/claude/subscribe/{task_id}?api_key=client-key-0123456789")
            made = await client.get("/health")
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=20)
    assert answer.headers["x-request-id"] == "req-42" and len(made.headers["x-request-id"]) == 32
    lines = [json.loads(line) for line in output.decode().splitlines() if line.strip()]
    assert lines and all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    assert any(line.get("request_id") == "req-42" for line in lines)
    text = output.decode()
    for secret in ("SECRET-PROMPT", "client-key-0123456789", EMULATOR_KEY):
        assert secret not in text
