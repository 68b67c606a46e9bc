"""POST /chat in its three shapes (API.md §4): question + cache, legacy TanStack messages, AG-UI runs."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from llm_gateway.emulator import emulated_text, emulated_tool_id
from llm_gateway.store import parse_event_id
from tests.conftest import Emulator
from tests.sse_client import Frame, frames


async def post_sse(client: httpx.AsyncClient, body: dict[str, Any], **kwargs: Any) -> list[Frame]:
    async with client.stream("POST", "/chat", json=body, **kwargs) as response:
        assert response.status_code == 200, await response.aread()
        return [frame async for frame in frames(response)]


def statuses(got: list[Frame]) -> list[dict[str, Any]]:
    return [json.loads(f.data) for f in got]


async def test_question_streams_the_status_dialect_as_in_seed_002(gateway: str) -> None:
    question = "What is Python? [emu:deltas=6]"
    async with httpx.AsyncClient(base_url=gateway) as client:
        got = statuses(await post_sse(client, {"question": question, "use_cache": True}))
    assert got[0] == {"status": "processing"}
    assert "".join(s["chunk"] for s in got if s["status"] == "streaming") == emulated_text(question, 6)
    assert got[-1] == {"status": "completed", "chunk": emulated_text(question, 6)}


async def test_cache_hit_miss_and_bypass_counted_at_the_emulator(gateway: str, emulator: Emulator) -> None:
    question = "What is Redis? [emu:deltas=5]"
    async with httpx.AsyncClient(base_url=gateway) as client:
        miss = statuses(await post_sse(client, {"question": question}))
        assert emulator.stats.messages == 1
        hit = statuses(await post_sse(client, {"question": "  What is   Redis? [emu:deltas=5] "}))
        assert emulator.stats.messages == 1, "a hit (whitespace aside, the same question) replays the stored stream"
        assert hit == miss
        other_model = statuses(await post_sse(client, {"question": question, "model": "claude-opus-4-6"}))
        assert emulator.stats.messages == 2, "the model is part of the key"
        assert other_model[-1]["chunk"] == miss[-1]["chunk"]
        await post_sse(client, {"question": question, "use_cache": False})
        assert emulator.stats.messages == 3, "use_cache: false always asks the model"


async def test_concurrent_identical_misses_share_one_generation(gateway: str, emulator: Emulator) -> None:
    question = "Single flight? [emu:deltas=40] [emu:delay_ms=5]"
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as client:
        results = await asyncio.gather(*(post_sse(client, {"question": question}) for _ in range(6)))
    assert emulator.stats.messages == 1
    for got in results:
        assert statuses(got)[-1] == {"status": "completed", "chunk": emulated_text(question, 40)}


async def test_failures_are_not_cached(gateway: str, emulator: Emulator) -> None:
    question = "Broken? [emu:fault=500]"
    async with httpx.AsyncClient(base_url=gateway) as client:
        first = statuses(await post_sse(client, {"question": question}))
        second = statuses(await post_sse(client, {"question": question}))
    assert first[-1]["status"] == "error" and first[-1]["type"] == "upstream_error"
    assert second[-1]["status"] == "error" and emulator.stats.messages == 2


async def test_legacy_messages_get_tanstack_stream_chunks(gateway: str, emulator: Emulator) -> None:
    prompt = "Weather in Paris? [emu:deltas=3]"
    body = {
        "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "Hi"},
            {
                "role": "assistant",
                "content": "Hello!",
                "toolCalls": [
                    {
                        "id": "toolu_9",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"x"}'},
                    }
                ],
            },
            {"role": "tool", "toolCallId": "toolu_9", "content": "18°C"},
            {"role": "user", "content": [{"type": "text", "text": prompt}]},
        ],
        "tools": [
            {
                "name": "get_weather",
                "description": "Current weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            }
        ],
        "data": {"model": "claude-opus-4-6"},
    }
    async with httpx.AsyncClient(base_url=gateway) as client:
        got = await post_sse(client, body)
    chunks = [json.loads(f.data) for f in got[:-1]]
    assert got[-1].data == "[DONE]"
    contents = [c for c in chunks if c["type"] == "content"]
    assert contents[-1]["content"] == emulated_text(prompt, 3) and all(c["model"] == "claude-opus-4-6" for c in chunks)
    assert chunks[-1]["type"] == "done" and chunks[-1]["finishReason"] == "stop"
    sent = json.loads(emulator.stats.bodies[-1])
    assert sent["system"] == "Be terse." and sent["model"] == "claude-opus-4-6"
    assert sent["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Hello!"},
                {"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {"city": "x"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_9", "content": "18°C"},
                {"type": "text", "text": prompt},
            ],
        },
    ]
    assert sent["tools"] == [
        {
            "name": "get_weather",
            "input_schema": body["tools"][0]["parameters"],  # type: ignore[index]
            "description": "Current weather",
        }
    ]


def run_input(run_id: str, prompt: str, **extra: Any) -> dict[str, Any]:
    return {
        "threadId": "thread-1",
        "runId": run_id,
        "state": {},
        "tools": [],
        "context": [],
        "messages": [{"id": "u1", "role": "user", "content": prompt}],
        "forwardedProps": {},
        **extra,
    }


async def test_agui_run_resume_and_join(gateway: str, emulator: Emulator) -> None:
    prompt = "AG-UI please [emu:deltas=20] [emu:tool=lookup]"
    body = run_input("run-abc.1", prompt, tools=[{"name": "lookup", "description": "d", "parameters": {}}])
    async with httpx.AsyncClient(base_url=gateway) as client:
        whole = await post_sse(client, body, headers={"X-Run-Id": "run-abc.1"})
        resumed = await post_sse(client, body, headers={"X-Run-Id": "run-abc.1", "Last-Event-ID": whole[6].id or ""})
        joined_response = await client.get("/chat", params={"runId": "run-abc.1", "offset": "-1"})
    events = [json.loads(f.data) for f in whole]
    assert events[0] == {"type": "RUN_STARTED", "threadId": "thread-1", "runId": "run-abc.1"}
    text = "".join(e["delta"] for e in events if e["type"] == "TEXT_MESSAGE_CONTENT")
    assert text == emulated_text(prompt, 20)
    starts = [e for e in events if e["type"] == "TOOL_CALL_START"]
    assert starts == [
        {
            "type": "TOOL_CALL_START",
            "toolCallId": emulated_tool_id(prompt),
            "toolCallName": "lookup",
            "parentMessageId": "msg_run-abc.1",
        }
    ]
    assert events[-1]["type"] == "RUN_FINISHED" and events[-1]["runId"] == "run-abc.1"
    assert events[-1]["metadata"]["tanstack"]["finishReason"] == "tool_calls"
    assert [(f.id, f.data) for f in resumed] == [(f.id, f.data) for f in whole[7:]], "the re-POST attached to the run"
    assert emulator.stats.messages == 1
    joined = [f async for f in frames(joined_response)]
    assert [(f.id, f.data) for f in joined] == [(f.id, f.data) for f in whole]


async def test_agui_resume_and_join_beyond_the_end_are_400s(gateway: str, emulator: Emulator) -> None:
    body = run_input("run-end", "the end [emu:deltas=3]")
    async with httpx.AsyncClient(base_url=gateway) as client:
        whole = await post_sse(client, body)
        ms, seq = parse_event_id(whole[-1].id or "")
        beyond = f"{ms}-{seq + 1}"
        repost = await client.post("/chat", json=body, headers={"Last-Event-ID": beyond})
        join = await client.get("/chat", params={"runId": "run-end", "offset": beyond})
        at_the_end = await client.get("/chat", params={"runId": "run-end", "offset": whole[-1].id})
    assert repost.status_code == 400 and repost.json()["type"] == "invalid_request"
    assert join.status_code == 400 and join.json()["type"] == "invalid_request"
    assert at_the_end.status_code == 200 and [f async for f in frames(at_the_end)] == []
    assert emulator.stats.messages == 1


async def test_agui_errors_end_with_run_error(gateway: str) -> None:
    async with httpx.AsyncClient(base_url=gateway) as client:
        got = await post_sse(client, run_input("run-err", "x [emu:fault=529]"))
    last = json.loads(got[-1].data)
    assert last["type"] == "RUN_ERROR" and last["code"] == "upstream_overloaded" and last["message"]
    assert last["metadata"]["tanstack"] == {"threadId": "thread-1", "runId": "run-err"}


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"nope", 400),
        (b"[1]", 422),
        (b'{"hello": 1}', 422),
        (b'{"question": ""}', 422),
        (b'{"question": "   "}', 422),
        (b'{"messages": []}', 422),
        (b'{"messages": [{"role": "assistant", "content": "only me"}]}', 422),
        (b'{"messages": [{"role": "user", "content": "x"}], "data": {"max_tokens": -1}}', 422),
        (b'{"runId": "bad id!", "messages": [{"role": "user", "content": "x"}]}', 422),
    ],
)
async def test_bad_chat_bodies(gateway: str, body: bytes, status: int) -> None:
    async with httpx.AsyncClient(base_url=gateway) as client:
        response = await client.post("/chat", content=body)
        join = await client.get("/chat")
        unknown = await client.get("/chat", params={"runId": "nope", "offset": "-1"})
    assert response.status_code == status, response.text
    assert response.json()["success"] is False and response.json()["type"] == "invalid_request"
    assert join.status_code == 400 and unknown.status_code == 404


async def test_found_in_review_bad_tools_and_bad_offsets_are_400s(gateway: str) -> None:
    async with httpx.AsyncClient(base_url=gateway) as client:
        for tools in ([{"function": "x"}], [{"function": None}], [{"name": ""}]):
            body = {"messages": [{"role": "user", "content": "hi"}], "tools": tools}
            response = await client.post("/chat", json=body)
            assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "tools", "0"]
        await post_sse(client, run_input("run-offset", "hi [emu:deltas=2]"))
        join = await client.get("/chat", params={"runId": "run-offset", "offset": "abc"})
    assert join.status_code == 400 and join.json()["type"] == "invalid_request"
