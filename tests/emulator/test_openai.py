"""The emulator's chat completions, over real loopback HTTP: wire order, usage, token limits, faults, auth, stats."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from llm_gateway.emulator import (
    create_emulator_app,
    emulated_call_id,
    emulated_deltas,
    emulated_text,
    emulated_tool_input,
)
from tests.servers import serve


@pytest.fixture
async def emu() -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    app = create_emulator_app(api_key="s3cret", deltas=5)
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        client.headers["authorization"] = "Bearer s3cret"
        yield client, app.state.stats


def chat(prompt: str, **fields: Any) -> dict[str, Any]:
    return {"model": "gpt-test", "messages": [{"role": "user", "content": prompt}], **fields}


async def emulator_chunks(client: httpx.AsyncClient, body: dict[str, Any]) -> list[Any]:
    async with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        lines = [line async for line in response.aiter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[6:]) for line in lines[:-1]]


async def test_emulator_stream_follows_the_wire_order(emu: tuple[httpx.AsyncClient, Any]) -> None:
    client, _ = emu
    prompt = "weather? [emu:tool=get_weather] [emu:deltas=4]"
    got = await emulator_chunks(client, chat(prompt, stream_options={"include_usage": True}))
    deltas = [c["choices"][0]["delta"] for c in got if c["choices"]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert [d["content"] for d in deltas[1:5]] == emulated_deltas(prompt, 4)
    fragments = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert fragments[0] == {
        "index": 0,
        "id": emulated_call_id(prompt),
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert all(set(f) == {"index", "function"} and set(f["function"]) == {"arguments"} for f in fragments[1:])
    assert len(fragments) == 3
    assert json.loads("".join(f["function"]["arguments"] for f in fragments)) == emulated_tool_input(prompt)
    assert got[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert got[-1]["choices"] == [] and got[-1]["usage"]["completion_tokens"] == 7
    assert all(c["usage"] is None for c in got[:-1])
    assert emulated_call_id(prompt).startswith("call_emu_")


async def test_emulator_without_usage_and_with_max_tokens(emu: tuple[httpx.AsyncClient, Any]) -> None:
    client, _ = emu
    got = await emulator_chunks(client, chat("cut [emu:tool=x]", max_tokens=3))
    assert all(c["choices"] and "usage" not in c for c in got)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in got) == "".join(
        emulated_deltas("cut [emu:tool=x]", 5)[:3]
    )
    assert got[-1]["choices"][0]["finish_reason"] == "length"
    got = await emulator_chunks(client, chat("cut", max_completion_tokens=2))
    assert got[-1]["choices"][0]["finish_reason"] == "length"


async def test_emulator_without_streaming(emu: tuple[httpx.AsyncClient, Any]) -> None:
    client, _ = emu
    prompt = "calm [emu:tool=look]"
    response = await client.post("/v1/chat/completions", json=chat(prompt))
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == "gpt-test"
    message = body["choices"][0]["message"]
    assert message["content"] == emulated_text(prompt, 5) and body["choices"][0]["finish_reason"] == "tool_calls"
    assert message["tool_calls"][0]["id"] == emulated_call_id(prompt)
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == emulated_tool_input(prompt)
    assert body["usage"]["completion_tokens"] == 8 and body["usage"]["total_tokens"] > 8


async def test_emulator_prompt_mirrors_the_messages_side(emu: tuple[httpx.AsyncClient, Any]) -> None:
    client, _ = emu
    parts = {"role": "user", "content": [{"type": "text", "text": "a "}, {"type": "text", "text": "b"}]}
    tools = [
        {"role": "tool", "tool_call_id": "c1", "content": "one "},
        {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "two"}]},
    ]
    assistant: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": []}
    for messages, prompt in [
        ([parts], "a b"),
        ([parts, assistant, *tools], "one two"),
        ([parts, assistant, *tools, {"role": "user", "content": "then"}], "then"),
    ]:
        response = await client.post("/v1/chat/completions", json={"model": "m", "messages": messages})
        assert response.json()["choices"][0]["message"]["content"] == emulated_text(prompt, 5)


@pytest.mark.parametrize(
    ("fault", "status", "error_type", "code"),
    [
        ("401", 401, "invalid_request_error", "invalid_api_key"),
        ("429", 429, "requests", "rate_limit_exceeded"),
        ("500", 500, "server_error", None),
        ("529", 503, "server_error", "overloaded"),
        ("error_midstream", 503, "server_error", "overloaded"),
    ],
)
async def test_emulator_http_faults(
    emu: tuple[httpx.AsyncClient, Any], fault: str, status: int, error_type: str, code: str | None
) -> None:
    client, _ = emu
    response = await client.post("/v1/chat/completions", json=chat(f"[emu:fault={fault}] [emu:retry_after=3]"))
    assert response.status_code == status
    assert response.json() == {
        "error": {"message": response.json()["error"]["message"], "type": error_type, "param": None, "code": code}
    }
    assert response.headers.get("retry-after") == ("3" if status == 429 else None)


async def test_emulator_error_midstream_frame(emu: tuple[httpx.AsyncClient, Any]) -> None:
    client, _ = emu
    got = await emulator_chunks_until_end(client, chat("[emu:fault=error_midstream] [emu:after=2]", stream=True))
    assert [c["choices"][0]["delta"].get("content") for c in got[:-1]][1:] == emulated_deltas(
        "[emu:fault=error_midstream] [emu:after=2]", 5
    )[:2]
    assert got[-1] == {
        "error": {"message": "The server is overloaded", "type": "server_error", "param": None, "code": "overloaded"}
    }


async def emulator_chunks_until_end(client: httpx.AsyncClient, body: dict[str, Any]) -> list[Any]:
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        return [json.loads(line[6:]) async for line in response.aiter_lines() if line]


async def test_emulator_auth_validation_and_stats(emu: tuple[httpx.AsyncClient, Any]) -> None:
    client, stats = emu
    url = "/v1/chat/completions"
    wrong = await client.post(url, json=chat("hi"), headers={"authorization": "Bearer nope"})
    x_api_key = await client.post(url, json=chat("hi"), headers={"authorization": "", "x-api-key": "s3cret"})
    for response in (wrong, x_api_key):
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    for bad in (
        b"nope",
        b'{"model": "m", "messages": []}',
        b'{"model": "m", "messages": [{"role": "user", "content": "[emu:deltas=x]"}]}',
    ):
        response = await client.post(url, content=bad)
        assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"
    assert stats.chat_completions == 5 and stats.messages == 0
    assert (await client.get("/_emulator/stats")).json() == {
        "messages": 0,
        "chat_completions": 5,
        "piapi_creates": 0,
        "piapi_gets": 0,
    }
    await client.post("/_emulator/reset")
    assert stats.chat_completions == 0 and (await client.get("/_emulator/stats")).json() == {
        "messages": 0,
        "chat_completions": 0,
        "piapi_creates": 0,
        "piapi_gets": 0,
    }
