"""Each wire dialect: a pure function of the event log (API.md §3), and resumable mid-stream over a real server."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from llm_gateway.dialects import DIALECTS, AguiDialect, StatusDialect, TanStackDialect, TextDialect
from llm_gateway.emulator import emulated_text
from llm_gateway.events import Complete, Error, Event, Start, Text, TokenUsage, ToolCall, Usage
from tests.sse_client import Frame, frames

LOG: list[tuple[str, Event]] = [
    ("1-0", Start("t1", "claude-x")),
    ("1-1", Text(0, "Hello")),
    ("1-2", Text(0, " two\nlines\n")),
    ("1-3", ToolCall(1, "toolu_1", "get_weather", "")),
    ("1-4", ToolCall(1, "toolu_1", "get_weather", '{"city":')),
    ("1-5", ToolCall(1, "toolu_1", "get_weather", '"Paris"}')),
    ("1-6", Usage(10, 7)),
    ("1-7", Complete("Hello two\nlines\n", "tool_use", TokenUsage(10, 7), "claude-x")),
]
FAILED = [*LOG[:2], ("1-3", Error("upstream_overloaded", "Overloaded"))]


def render(dialect: Any, log: list[tuple[str, Event]]) -> bytes:
    return b"".join(dialect.render(event_id, event) for event_id, event in log)


def data_lines(raw: bytes) -> list[Any]:
    """Each ``data:`` line on its own, as the TanStack client parses them (the text dialect joins lines)."""
    lines = [line[6:] for line in raw.decode().split("\n") if line.startswith("data: ")]
    return [line if line == "[DONE]" else json.loads(line) for line in lines]


def test_text() -> None:
    raw = render(TextDialect(), LOG)
    assert raw == b"id: 1-1\ndata: Hello\n\nid: 1-2\ndata:  two\ndata: lines\ndata: \n\ndata: [DONE]\n\n"
    failed = render(TextDialect(), FAILED)
    assert failed.endswith(
        b'event: error\nid: 1-3\ndata: {"type":"upstream_overloaded","message":"Overloaded","retryable":false}\n\n'
        b"data: [DONE]\n\n"
    )


def test_status() -> None:
    assert data_lines(render(StatusDialect(), LOG)) == [
        {"status": "processing"},
        {"status": "streaming", "chunk": "Hello"},
        {"status": "streaming", "chunk": " two\nlines\n"},
        {"status": "completed", "chunk": "Hello two\nlines\n"},
    ]
    assert data_lines(render(StatusDialect(), FAILED))[-1] == {
        "status": "error",
        "message": "Overloaded",
        "type": "upstream_overloaded",
        "retryable": False,
    }


def test_tanstack_legacy_chunks() -> None:
    chunks = data_lines(render(TanStackDialect("t1"), LOG))
    assert chunks[-1] == "[DONE]"
    for chunk in chunks[:-1]:
        assert chunk.pop("timestamp") > 0 and chunk.pop("id") == "t1" and chunk.pop("model") == "claude-x"
    assert chunks[:-1] == [
        {"type": "content", "delta": "Hello", "content": "Hello", "role": "assistant"},
        {"type": "content", "delta": " two\nlines\n", "content": "Hello two\nlines\n", "role": "assistant"},
        *[
            {
                "type": "tool_call",
                "index": 1,
                "toolCall": {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": a}},
            }
            for a in ("", '{"city":', '"Paris"}')
        ],
        {
            "type": "done",
            "finishReason": "tool_calls",
            "usage": {"promptTokens": 10, "completionTokens": 7, "totalTokens": 17},
        },
    ]
    error = data_lines(render(TanStackDialect("t1"), FAILED))[-2]
    assert error["type"] == "error" and error["error"] == {
        "message": "Overloaded",
        "code": "upstream_overloaded",
        "retryable": False,
    }


def test_agui_events_in_order() -> None:
    raw = render(AguiDialect("r1", "th1"), LOG)
    events = data_lines(raw)
    assert [e["type"] for e in events] == [
        "RUN_STARTED",
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_END",  # before the tool call starts, as in wire-formats §3.2
        "TOOL_CALL_START",
        "TOOL_CALL_ARGS",
        "TOOL_CALL_ARGS",
        "TOOL_CALL_END",
        "RUN_FINISHED",
    ]
    assert events[0] == {"type": "RUN_STARTED", "threadId": "th1", "runId": "r1"}
    assert events[5] == {
        "type": "TOOL_CALL_START",
        "toolCallId": "toolu_1",
        "toolCallName": "get_weather",
        "parentMessageId": "msg_r1",
    }
    assert all(e["delta"] for e in events if "delta" in e), "deltas are never empty"
    assert events[-1]["usage"] == [{"inputTokens": 10, "outputTokens": 7, "totalTokens": 17}]
    assert events[-1]["metadata"]["tanstack"] == {"finishReason": "tool_calls", "model": "claude-x"}
    assert events[-1]["outcome"] == {
        "type": "interrupt",
        "interrupts": [
            {
                "id": "client_tool_toolu_1",
                "reason": "tanstack:client_tool_execution",
                "message": "Client tool get_weather is ready to run",
                "toolCallId": "toolu_1",
                "metadata": {"kind": "client_tool", "toolName": "get_weather", "input": {"city": "Paris"}},
            }
        ],
    }
    assert b"[DONE]" not in raw
    # Several AG-UI events for one of ours: only the last frame carries the id.
    first_text = AguiDialect("r1").render("9-9", Text(0, "a"))
    assert first_text.count(b"id: ") == 1 and first_text.rstrip().split(b"\n\n")[-1].startswith(b"id: 9-9")
    error = data_lines(render(AguiDialect("r1", "th1"), FAILED))[-1]
    assert error == {
        "type": "RUN_ERROR",
        "message": "Overloaded",
        "code": "upstream_overloaded",
        "metadata": {"tanstack": {"threadId": "th1", "runId": "r1"}, "retryable": False},
    }


def comparable(frame: Frame) -> tuple[str | None, str, Any]:
    data: Any = frame.data
    if frame.data.startswith("{"):
        data = json.loads(frame.data)
        data.pop("timestamp", None)  # the legacy TanStack chunks carry the time of rendering
    return frame.id, frame.event, data


@pytest.mark.parametrize("dialect", sorted(set(DIALECTS) - {"trellis"}))  # trellis: tests/test_trellis.py
async def test_resume_mid_stream_in_every_dialect(gateway: str, dialect: str) -> None:
    prompt = f"resume in {dialect} [emu:deltas=30] [emu:tool=lookup]"
    async with httpx.AsyncClient(base_url=gateway) as client:
        created = await client.post(
            "/api/claude/prompt/async",
            json={"prompt": prompt, "tools": [{"name": "lookup", "input_schema": {"type": "object"}}]},
        )
        task_id = created.json()["task_id"]
        url = f"/api/claude/subscribe/{task_id}?format={dialect}"
        async with client.stream("GET", url) as response:
            whole = [frame async for frame in frames(response)]
        with_ids = [i for i, frame in enumerate(whole) if frame.id]
        cut = with_ids[len(with_ids) // 2]
        async with client.stream("GET", url, headers={"Last-Event-ID": whole[cut].id or ""}) as response:
            rest = [frame async for frame in frames(response)]
    assert [comparable(f) for f in whole[: cut + 1] + rest] == [comparable(f) for f in whole]
    ids = [f.id for f in whole if f.id]
    assert len(ids) == len(set(ids))
    if dialect in ("text", "status", "native"):
        text = "".join(
            f.data if dialect == "text" else json.loads(f.data)["chunk"]
            for f in whole
            if (dialect == "text" and f.event == "message" and f.data != "[DONE]")
            or (dialect == "status" and json.loads(f.data)["status"] == "streaming")
            or (dialect == "native" and f.event == "chunk")
        )
        assert text == emulated_text(prompt, 30)
    if dialect == "openai":
        chunks = [json.loads(f.data) for f in whole if f.data != "[DONE]"]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        assert text == emulated_text(prompt, 30)
