"""The ``anthropic`` dialect on its own: the Messages stream and message of an event log (wire-formats §1.2, §1.3)."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from llm_gateway.anthropic_errors import anthropic_error
from llm_gateway.content import TextBlock, ToolUseBlock
from llm_gateway.dialects_anthropic import AnthropicDialect, AnthropicMessage, MessageUsage, message_of
from llm_gateway.errors import GatewayError, error_body
from llm_gateway.events import Complete, Error, Event, Start, Text, TokenUsage, ToolCall, Usage
from tests.test_dialects import FAILED, LOG, render


def parsed(raw: bytes) -> list[tuple[str, str | None, dict[str, Any]]]:
    """(event, id, data) per frame; each frame is one event line, at most one id line and one data line."""
    out = []
    for frame in raw.decode().removesuffix("\n\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in frame.split("\n"))
        assert set(fields) <= {"event", "id", "data"}
        data = json.loads(fields["data"])
        assert data["type"] == fields["event"]
        out.append((fields["event"], fields.get("id"), data))
    return out


def block_start(index: int, block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": block}


def delta(index: int, **fields: str) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": fields}


def test_the_stream_of_a_log() -> None:
    frames = parsed(render(AnthropicDialect("t1"), LOG))
    start: dict[str, Any] = {
        "id": "msg_t1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0},
    }
    tool = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}
    ending = {"stop_reason": "tool_use", "stop_sequence": None}
    assert frames == [
        ("message_start", "1-0", {"type": "message_start", "message": start}),
        ("content_block_start", None, block_start(0, {"type": "text", "text": ""})),
        ("content_block_delta", "1-1", delta(0, type="text_delta", text="Hello")),
        ("content_block_delta", "1-2", delta(0, type="text_delta", text=" two\nlines\n")),
        ("content_block_stop", None, {"type": "content_block_stop", "index": 0}),
        ("content_block_start", "1-3", block_start(1, tool)),
        ("content_block_delta", "1-4", delta(1, type="input_json_delta", partial_json='{"city":')),
        ("content_block_delta", "1-5", delta(1, type="input_json_delta", partial_json='"Paris"}')),
        ("content_block_stop", None, {"type": "content_block_stop", "index": 1}),
        (
            "message_delta",
            None,
            {"type": "message_delta", "delta": ending, "usage": {"input_tokens": 10, "output_tokens": 7}},
        ),
        ("message_stop", "1-7", {"type": "message_stop"}),
    ]


def test_a_text_delta_in_an_open_block_is_the_frame_of_its_payload() -> None:
    dialect = AnthropicDialect("t1")
    render(dialect, LOG[:2])
    text = Text(0, ' "quoted", café\nnext line')
    payload = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text.text}}
    assert dialect.payloads(text) == [payload]
    assert (
        dialect.render("1-9", text)
        == b"event: content_block_delta\nid: 1-9\ndata: " + msgspec.json.encode(payload) + b"\n\n"
    )


def test_an_error_replaces_the_tail() -> None:
    frames = parsed(render(AnthropicDialect("t1"), FAILED))
    assert [event for event, _, _ in frames] == ["message_start", "content_block_start", "content_block_delta", "error"]
    assert frames[-1] == (
        "error",
        "1-3",
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded", "retryable": False}},
    )
    limited = AnthropicDialect("t1").render("2-0", Error("upstream_rate_limited", "slow down", True, 7.0))
    assert parsed(limited)[0][2]["error"] == {
        "type": "rate_limit_error",
        "message": "slow down",
        "retryable": True,
        "retry_after": 7.0,
    }


@pytest.mark.parametrize("cut", range(1, len(LOG)))
def test_a_primed_dialect_goes_on_exactly_where_the_whole_stream_does(cut: int) -> None:
    primed = AnthropicDialect("t1")
    seen = render(primed, LOG[:cut])  # what sse.frames does on resume, discarding these
    assert seen + render(primed, LOG[cut:]) == render(AnthropicDialect("t1"), LOG)


def test_blocks_are_numbered_in_the_order_they_start_whatever_the_upstream_index() -> None:
    # An OpenAI-compatible upstream: text at index 0, tool calls at 1 + their slot, interleaved with text.
    log: list[tuple[str, Event]] = [
        ("1-0", Start("t", "gpt")),
        ("1-1", ToolCall(1, "call_a", "a", "{}")),
        ("1-2", Text(0, "between")),
        ("1-3", ToolCall(2, "call_b", "b", "")),
        ("1-4", ToolCall(2, "call_b", "b", '{"x": 1}')),
        ("1-5", Usage(3, 4)),
        ("1-6", Text(0, "")),  # nothing to say: no block
        ("1-7", Complete("between", "tool_use", TokenUsage(3, 4), "gpt")),
    ]
    frames = parsed(render(AnthropicDialect("t"), log))
    starts = [
        (data["index"], data["content_block"]["type"]) for event, _, data in frames if event == "content_block_start"
    ]
    stops = [data["index"] for event, _, data in frames if event == "content_block_stop"]
    assert starts == [(0, "tool_use"), (1, "text"), (2, "tool_use")] and stops == [0, 1, 2]
    assert message_of("t", [event for _, event in log]).content == [
        ToolUseBlock("call_a", "a", {}),
        TextBlock("between"),
        ToolUseBlock("call_b", "b", {"x": 1}),
    ]


def test_the_message_is_the_stream_folded() -> None:
    assert message_of("t1", [event for _, event in LOG]) == AnthropicMessage(
        id="msg_t1",
        model="claude-x",
        content=[TextBlock("Hello two\nlines\n"), ToolUseBlock("toolu_1", "get_weather", {"city": "Paris"})],
        stop_reason="tool_use",
        usage=MessageUsage(10, 7),
    )
    stopped = Complete("Hi", "stop_sequence", TokenUsage(1, 1), "m", stop_sequence="END")
    message = message_of("t2", [Start("t2", "m"), Text(0, "Hi"), ToolCall(1, "toolu_2", "f", '{"cut'), stopped])
    assert message.content[1] == ToolUseBlock("toolu_2", "f", {})  # arguments cut short: no input rather than none
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "END")
    assert msgspec.json.decode(msgspec.json.encode(message))["content"][0] == {"type": "text", "text": "Hi"}


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (GatewayError("invalid_request", "invalid request body", status=422), 400, "invalid_request_error"),
        (GatewayError("invalid_request", "POST not allowed here", status=405), 405, "invalid_request_error"),
        (GatewayError("unauthorized", "missing or invalid API key"), 401, "authentication_error"),
        (GatewayError("not_found", "no route"), 404, "not_found_error"),
        (GatewayError("payload_too_large", "too big"), 413, "request_too_large"),
        (GatewayError("rate_limited", "over TENANT_RPM"), 429, "rate_limit_error"),
        (GatewayError("upstream_rate_limited", "upstream 429"), 429, "rate_limit_error"),
        (GatewayError("upstream_overloaded", "upstream overloaded_error"), 529, "overloaded_error"),
        (GatewayError("upstream_timeout", "slow"), 504, "timeout_error"),
        (GatewayError("upstream_auth", "upstream 401"), 502, "api_error"),
        (GatewayError("upstream_error", "upstream 500"), 502, "api_error"),
        (GatewayError("unavailable", "store down"), 503, "overloaded_error"),
        (GatewayError("internal", "internal server error"), 500, "api_error"),
        (GatewayError("cancelled", "cancelled by request"), 499, "invalid_request_error"),
    ],
)
def test_our_error_answers_in_anthropics_shape(error: GatewayError, status: int, kind: str) -> None:
    got_status, body = anthropic_error(error.status, msgspec.json.encode(error_body(error)))
    assert got_status == status
    assert json.loads(body) == {"type": "error", "error": {"type": kind, "message": error.message}}


def test_bad_fields_are_named_in_the_message() -> None:
    detail = [
        {"loc": ["body", "max_tokens"], "msg": "Expected `int`, got `str`", "type": "invalid"},
        {"loc": ["body", "messages", 0, "role"], "msg": "field required", "type": "missing"},
    ]
    error = GatewayError("invalid_request", "invalid request body", status=422, detail=detail)
    status, body = anthropic_error(422, msgspec.json.encode(error_body(error)))
    assert status == 400 and json.loads(body)["error"]["message"] == (
        "invalid request body; max_tokens: Expected `int`, got `str`; messages.0.role: field required"
    )
    assert anthropic_error(502, b"<html>bad gateway</html>") == (
        502,
        b'{"type":"error","error":{"type":"api_error","message":"HTTP 502"}}',
    )
