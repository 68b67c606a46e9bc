"""OpenAI's wire, pure: request bodies to ours, the ``openai`` dialect of a log, errors in OpenAI's shape, the
model list (the gateway end to end with the SDK: tests/test_openai_api.py)."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from llm_gateway.bodies_openai import ChatCompletionRequest, from_chat_completion
from llm_gateway.catalog import anthropic_models, display_name, openai_models, served_models
from llm_gateway.dialects import DIALECTS
from llm_gateway.dialects_openai import OpenAIDialect, chat_completion
from llm_gateway.errors import GatewayError, InvalidRequest
from llm_gateway.errors_wire import openai_error_body, wire_error_response
from llm_gateway.events import Complete, Error, Event, Start, Text, TokenUsage, ToolCall, Usage
from llm_gateway.http import validate
from llm_gateway.providers import GenerationRequest
from tests.conftest import gateway_settings

# --- requests: OpenAI's body -> a GenerationRequest ---------------------------------------------------------------


def convert(messages: list[dict[str, Any]], **fields: Any) -> GenerationRequest:
    body = validate({"model": "claude-x", "messages": messages, **fields}, ChatCompletionRequest)
    return from_chat_completion(body, "claude-default")


def blocks(request: GenerationRequest) -> list[dict[str, Any]]:
    converted: list[dict[str, Any]] = msgspec.to_builtins(request.messages)
    return converted


def test_a_conversation_in_the_anthropic_format() -> None:
    request = convert(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "What is this?"}, image("https://x.test/cat.png")]},
            {"role": "developer", "content": [{"type": "text", "text": "Be kind."}]},
            {
                "role": "assistant",
                "content": "Let me look.",
                "tool_calls": [
                    {"id": "call_a", "type": "function", "function": {"name": "look", "arguments": '{"q":1}'}},
                    {"id": "call_b", "type": "function", "function": {"name": "look", "arguments": ""}},
                ],
            },
            {"role": "tool", "tool_call_id": "call_a", "content": "a cat"},
            {"role": "tool", "tool_call_id": "call_b", "content": [{"type": "text", "text": "a hat"}]},
            {"role": "user", "content": [image("data:image/jpeg;base64,QUJD"), {"type": "text", "text": "and?"}]},
        ]
    )
    assert request.system == "Be brief.\n\nBe kind." and request.model == "claude-x" and request.max_tokens == 4096
    assert blocks(request) == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image", "source": {"type": "url", "url": "https://x.test/cat.png"}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "call_a", "name": "look", "input": {"q": 1}},
                {"type": "tool_use", "id": "call_b", "name": "look", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_a", "content": "a cat"},
                {"type": "tool_result", "tool_use_id": "call_b", "content": "a hat"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "QUJD"}},
                {"type": "text", "text": "and?"},
            ],
        },
    ]


def image(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url, "detail": "low"}}


def test_options() -> None:
    hi = [{"role": "user", "content": "hi"}]
    request = convert(hi, max_tokens=10, max_completion_tokens=20, temperature=0.3, top_p=0.5, stop="END")
    assert (request.max_tokens, request.temperature, request.top_p) == (20, 0.3, 0.5)
    assert request.stop_sequences == ["END"] and request.tools is None and request.tool_choice is None
    assert convert(hi, stop=["a", "b"], max_tokens=7).stop_sequences == ["a", "b"]
    assert convert(hi, model="openai/gpt-x", temperature=1.7).temperature == 1.7, "OpenAI's range, for OpenAI"
    body = validate({"messages": hi, "seed": 1, "logprobs": True, "user": "u"}, ChatCompletionRequest)
    assert from_chat_completion(body, "claude-default").model == "claude-default"


TOOL = {"type": "function", "function": {"name": "look", "description": "Look", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(
    ("fields", "choice"),
    [
        ({}, None),
        ({"tool_choice": "auto"}, {"type": "auto"}),
        ({"tool_choice": "required"}, {"type": "any"}),
        ({"tool_choice": "none", "parallel_tool_calls": False}, {"type": "none"}),
        ({"tool_choice": {"type": "function", "function": {"name": "look"}}}, {"type": "tool", "name": "look"}),
        ({"parallel_tool_calls": False}, {"type": "auto", "disable_parallel_tool_use": True}),
        ({"tool_choice": "required", "parallel_tool_calls": True}, {"type": "any"}),
    ],
)
def test_tools_and_tool_choice(fields: dict[str, Any], choice: dict[str, Any] | None) -> None:
    request = convert([{"role": "user", "content": "hi"}], tools=[TOOL], **fields)
    assert request.tools == [{"name": "look", "description": "Look", "input_schema": {"type": "object"}}]
    assert request.tool_choice == choice


@pytest.mark.parametrize(
    ("messages", "fields", "loc"),
    [
        ([{"role": "user", "content": [image("ftp://x/y.png")]}], {}, ["messages", 0, "content", 0, "image_url"]),
        ([{"role": "user", "content": [image("data:image/png,abc")]}], {}, ["messages", 0, "content", 0, "image_url"]),
        ([{"role": "system", "content": "only me"}], {}, ["messages"]),
        ([{"role": "user", "content": "hi"}], {"n": 3}, ["n"]),
        ([{"role": "user", "content": "hi"}], {"temperature": 1.2}, ["temperature"]),
        (
            [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "[1]"}}]}],
            {},
            ["messages", 0, "tool_calls", 0, "function", "arguments"],
        ),
    ],
)
def test_refusals_name_the_field(messages: list[dict[str, Any]], fields: dict[str, Any], loc: list[Any]) -> None:
    with pytest.raises(InvalidRequest) as caught:
        convert(messages, **fields)
    assert caught.value.status == 400 and caught.value.detail[0]["loc"] == ["body", *loc]


# --- the dialect --------------------------------------------------------------------------------------------------

LOG: list[tuple[str, Event]] = [
    ("1700000000123-0", Start("t1", "claude-x")),
    ("1700000000200-0", Text(0, "Hello")),
    ("1700000000300-0", ToolCall(1, "toolu_1", "get_weather", "")),
    ("1700000000300-1", ToolCall(1, "toolu_1", "get_weather", '{"city":')),
    ("1700000000300-2", ToolCall(1, "toolu_1", "get_weather", '"Paris"}')),
    ("1700000000400-0", ToolCall(2, "toolu_2", "now", "")),
    ("1700000000500-0", Usage(10, 7)),
    ("1701000000000-0", Complete("Hello", "tool_use", TokenUsage(10, 7), "claude-x")),
]


def render(dialect: Any, log: list[tuple[str, Event]]) -> bytes:
    return b"".join(dialect.render(event_id, event) for event_id, event in log)


def frames(raw: bytes) -> list[tuple[str | None, Any]]:
    """(id, data) of each frame, the data parsed."""
    parsed = []
    for frame in raw.decode().split("\n\n")[:-1]:
        fields = dict(line.split(": ", 1) for line in frame.split("\n"))
        data = fields["data"]
        parsed.append((fields.get("id"), data if data == "[DONE]" else json.loads(data)))
    return parsed


def test_the_stream() -> None:
    got = frames(render(DIALECTS["openai"]("t1", ""), LOG))
    base = {"id": "chatcmpl-t1", "object": "chat.completion.chunk", "created": 1700000000, "model": "claude-x"}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], "usage": None}

    call = {"index": 0, "id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    now = {"index": 1, "id": "toolu_2", "type": "function", "function": {"name": "now", "arguments": ""}}
    usage = {"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17}
    assert got == [
        ("1700000000123-0", chunk({"role": "assistant", "content": ""})),
        ("1700000000200-0", chunk({"content": "Hello"})),
        ("1700000000300-0", chunk({"tool_calls": [call]})),
        ("1700000000300-1", chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]})),
        ("1700000000300-2", chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]})),
        ("1700000000400-0", chunk({"tool_calls": [now]})),
        (None, chunk({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]})),
        (None, chunk({}, "tool_calls")),
        ("1701000000000-0", {**base, "choices": [], "usage": usage}),
        (None, "[DONE]"),
    ]


def test_a_stream_without_usage_and_a_failed_one() -> None:
    log: list[tuple[str, Event]] = [LOG[0], ("5-0", Text(0, "Hi")), ("6-0", Complete("Hi", None, TokenUsage(), "m"))]
    got = frames(render(OpenAIDialect("t1", include_usage=False), log))
    assert [(event_id, data["choices"][0]["finish_reason"]) for event_id, data in got[1:-1]] == [
        ("5-0", None),
        ("6-0", "stop"),
    ]
    assert got[-1] == (None, "[DONE]")
    failed = [*LOG[:2], ("9-0", Error("upstream_rate_limited", "slow down", True, 7.0))]
    *_, error, done = frames(render(OpenAIDialect("t1"), failed))
    assert error == (
        "9-0",
        {
            "error": {
                "message": "slow down",
                "type": "requests",
                "param": None,
                "code": "rate_limit_exceeded",
                "retryable": True,
                "retry_after": 7.0,
            }
        },
    )
    assert done == (None, "[DONE]")


def test_a_resumed_stream_continues_where_it_stopped() -> None:
    whole = render(OpenAIDialect("t1"), LOG)
    for cut in range(1, len(LOG)):
        primed = OpenAIDialect("t1")
        render(primed, LOG[:cut])  # as sse.frames primes a stateful dialect
        assert render(OpenAIDialect("t1"), LOG[:cut]) + render(primed, LOG[cut:]) == whole


def test_the_whole_completion() -> None:
    complete = LOG[-1][1]
    assert isinstance(complete, Complete)
    body = msgspec.to_builtins(chat_completion("t1", complete, LOG))
    assert body == {
        "id": "chatcmpl-t1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "claude-x",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hello",
                    "refusal": None,
                    "tool_calls": [
                        {
                            "id": "toolu_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                        },
                        {"id": "toolu_2", "type": "function", "function": {"name": "now", "arguments": "{}"}},
                    ],
                },
                "finish_reason": "tool_calls",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17},
    }
    only_text = chat_completion("t1", Complete("", "max_tokens", TokenUsage(1, 2), "m"), LOG[:2])
    assert only_text.choices[0].message.content == "" and only_text.choices[0].finish_reason == "length"


# --- errors -------------------------------------------------------------------------------------------------------


def scope(path: str, *headers: tuple[bytes, bytes]) -> dict[str, Any]:
    return {"type": "http", "path": path, "headers": list(headers)}


@pytest.mark.parametrize(
    ("error", "status", "kind", "code"),
    [
        (GatewayError("unauthorized", "no key"), 401, "invalid_request_error", "invalid_api_key"),
        (GatewayError("not_found", "none"), 404, "invalid_request_error", "not_found"),
        (GatewayError("rate_limited", "slow", retry_after=3), 429, "requests", "rate_limit_exceeded"),
        (GatewayError("upstream_overloaded", "busy", retry_after=5), 503, "server_error", "upstream_overloaded"),
        (GatewayError("internal", "oops"), 500, "server_error", "internal"),
        (
            InvalidRequest("bad", detail=[{"loc": ["body", "messages", "2", "content"]}], status=422),
            400,
            "invalid_request_error",
            "invalid_request",
        ),
    ],
)
def test_errors_in_openai_shape(error: GatewayError, status: int, kind: str, code: str) -> None:
    response = wire_error_response(scope("/v1/chat/completions"), error)
    body = json.loads(bytes(response.body))
    assert response.status_code == status and body == msgspec.to_builtins(openai_error_body(error))
    assert body["error"]["type"] == kind and body["error"]["code"] == code and body["error"]["message"] == error.message
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["param"] == ("messages[2].content" if error.detail else None)
    assert response.headers.get("retry-after") == (None if error.retry_after is None else str(round(error.retry_after)))


def test_the_shape_follows_the_path_and_the_anthropic_version() -> None:
    error = GatewayError("unauthorized", "no key")
    assert "error" in json.loads(bytes(wire_error_response(scope("/v1/models"), error).body))
    for other in (scope("/api/claude/prompt"), scope("/v1/models", (b"anthropic-version", b"2023-06-01"))):
        assert json.loads(bytes(wire_error_response(other, error).body))["type"] == "unauthorized"


# --- the model list -----------------------------------------------------------------------------------------------


def test_the_models_listed() -> None:
    claude_only = served_models(gateway_settings("http://127.0.0.1:9", claude_model="claude-custom-1"))
    assert claude_only[0] == ("claude-custom-1", "anthropic") and {owner for _, owner in claude_only} == {"anthropic"}
    both = served_models(gateway_settings("http://127.0.0.1:9", google_api_key="g"))
    assert ("gemini/gemini-2.5-flash", "google") in both and not any(m.startswith("openai/") for m, _ in both)
    assert served_models(gateway_settings(None, anthropic_api_key=None)) == []
    listed = openai_models([("claude-haiku-4-5", "anthropic")])
    assert listed.object == "list" and listed.data[0].id == "claude-haiku-4-5" and listed.data[0].created == 0
    assert anthropic_models([]).first_id is None and anthropic_models([]).data == []
    assert display_name("claude-sonnet-4-5-20250929") == "Claude Sonnet 4.5"
    assert display_name("claude-opus-4-7") == "Claude Opus 4.7" and display_name("cerebras/x-1") == "cerebras/x-1"
