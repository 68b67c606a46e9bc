"""OpenAI-compatible providers: the pure request conversion and chunk mapping, the httpx client against
respx, and the gateway end to end (uvicorn -> emulator) for each vendor (the emulator's own chat completions:
tests/emulator/test_openai.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import respx

from llm_gateway.emulator import emulated_call_id, emulated_text, emulated_tool_input
from llm_gateway.errors import GatewayError, InvalidRequest
from llm_gateway.events import Complete, Event, Text, TokenUsage, ToolCall, Usage
from llm_gateway.http import validate
from llm_gateway.providers import GenerationRequest
from llm_gateway.providers.openai import (
    ChunkMapper,
    OpenAICompatibleProvider,
    openai_body,
    openai_messages,
    openai_tool_choice,
    openai_tools,
    retry_delay,
)
from llm_gateway.providers.registry import Providers
from tests.conftest import EMULATOR_KEY, UPSTREAM_FAULTS, Emulator, GatewayFactory
from tests.sse_client import Frame, read_all

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather",
    "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}},
}


def request(messages: list[dict[str, Any]], **fields: Any) -> GenerationRequest:
    # As the routes build it: unknown content blocks are an InvalidRequest at the edge.
    return validate({"model": "gpt-test", "messages": messages, **fields}, GenerationRequest)


# --- the request: Anthropic format -> OpenAI's ------------------------------------------------------------------


def test_body_for_a_plain_prompt() -> None:
    body = openai_body(request([{"role": "user", "content": "hi"}], system="be brief", temperature=0.2, max_tokens=9))
    assert body == {
        "model": "gpt-test",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 9,
        "temperature": 0.2,
    }
    body = openai_body(request([{"role": "user", "content": "hi"}]), max_tokens_field="max_completion_tokens")
    assert body["max_completion_tokens"] == 4096 and "max_tokens" not in body and "temperature" not in body


def test_top_p_and_stop_sequences_pass_through() -> None:
    body = openai_body(request([{"role": "user", "content": "hi"}], top_p=0.5, stop_sequences=["END", "STOP"]))
    assert body["top_p"] == 0.5 and body["stop"] == ["END", "STOP"]


def test_stop_sequences_and_top_p_map_to_openai_and_the_rest_is_left_out() -> None:
    fields = {"stop_sequences": ["\n\nHuman:"], "top_p": 0.9, "top_k": 5, "metadata": {"user_id": "u1"}}
    body = openai_body(request([{"role": "user", "content": "hi"}], **fields, thinking={"type": "adaptive"}))
    assert body["stop"] == ["\n\nHuman:"] and body["top_p"] == 0.9
    assert not {"top_k", "metadata", "thinking", "user", "stop_sequences"} & set(body)


def test_system_blocks_are_joined() -> None:
    system = [{"type": "text", "text": "one. "}, {"type": "text", "text": "two.", "cache_control": {"type": "x"}}]
    messages = openai_messages(request([{"role": "user", "content": "hi"}], system=system))
    assert messages[0] == {"role": "system", "content": "one. two."}


def test_tool_use_and_tool_result_round_trip() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "text", "text": "weather in Paris and Rome?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {"query": "Paris"}},
                {"type": "tool_use", "id": "call_b", "name": "get_weather", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_a", "content": "sunny"},
                {"type": "text", "text": "and then?"},
                {
                    "type": "tool_result",
                    "tool_use_id": "call_b",
                    "content": [{"type": "text", "text": "no"}, {"type": "text", "text": "such city"}],
                    "is_error": True,
                },
            ],
        },
        {"role": "assistant", "content": [{"type": "tool_use", "id": "call_c", "name": "get_weather", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_c", "content": "rain"}]},
    ]
    assert openai_messages(request(messages)) == [
        {"role": "user", "content": "weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"query":"Paris"}'},
                },
                {"id": "call_b", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_b", "content": "Error: no\nsuch city"},
        {"role": "user", "content": "and then?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_c", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_c", "content": "rain"},
    ]


def test_images_become_image_url_parts() -> None:
    content = [
        {"type": "text", "text": "what is this?"},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "QUJD"}},
    ]
    assert openai_messages(request([{"role": "user", "content": content}])) == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,QUJD"}},
            ],
        }
    ]


def test_unsupported_blocks_are_invalid_requests() -> None:
    document = {"type": "document", "source": {"type": "text", "data": "x"}}
    with pytest.raises(InvalidRequest):
        openai_messages(request([{"role": "user", "content": [document]}]))
    with pytest.raises(InvalidRequest):
        openai_messages(request([{"role": "assistant", "content": [{"type": "server_tool_use"}]}]))


def test_tools_and_tool_choice() -> None:
    bare = {"name": "now"}
    assert openai_tools([WEATHER_TOOL, bare]) == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather",
                "parameters": WEATHER_TOOL["input_schema"],
            },
        },
        {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}},
    ]
    assert openai_tool_choice({"type": "auto"}) == "auto"
    assert openai_tool_choice({"type": "any"}) == "required"
    assert openai_tool_choice({"type": "none"}) == "none"
    assert openai_tool_choice({"type": "tool", "name": "now"}) == {"type": "function", "function": {"name": "now"}}
    assert openai_tool_choice({"type": "mystery"}) is None
    body = openai_body(
        request(
            [{"role": "user", "content": "hi"}],
            tools=[bare],
            tool_choice={"type": "any", "disable_parallel_tool_use": True},
        )
    )
    assert body["tool_choice"] == "required" and body["parallel_tool_calls"] is False
    assert "tool_choice" not in openai_body(request([{"role": "user", "content": "hi"}], tool_choice={"type": "any"}))


# --- the stream: chunks -> events (pure) ------------------------------------------------------------------------


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return json.dumps({"id": "c1", "model": "gpt-x-2025", "choices": choices, **extra}).encode()


def feed_all(mapper: ChunkMapper, payloads: list[bytes]) -> list[Event]:
    return [*mapper.feed(payloads), mapper.complete()]


def test_text_finish_and_usage() -> None:
    payloads = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo"}),
        chunk({}, "stop"),
        chunk(usage={"prompt_tokens": 20, "completion_tokens": 2, "total_tokens": 22}),
        b"[DONE]",
        chunk({"content": "after the end is ignored"}),
    ]
    assert feed_all(ChunkMapper("gpt-test"), payloads) == [
        Text(0, "Hel"),
        Text(0, "lo"),
        Usage(20, 2),
        Complete("Hello", "end_turn", TokenUsage(20, 2), "gpt-x-2025"),
    ]


@pytest.mark.parametrize(
    ("finish", "stop_reason"),
    [("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use"), ("content_filter", "refusal")],
)
def test_finish_reasons(finish: str, stop_reason: str) -> None:
    complete = feed_all(ChunkMapper("m"), [chunk({}, finish)])[-1]
    assert isinstance(complete, Complete) and complete.stop_reason == stop_reason


def test_tool_calls_keyed_by_index_carry_the_first_id() -> None:
    first = {"index": 0, "id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    second = {"index": 1, "id": "call_b", "type": "function", "function": {"name": "now", "arguments": "{}"}}
    payloads = [
        chunk({"tool_calls": [first]}),
        chunk({"tool_calls": [{"index": 0, "id": None, "function": {"arguments": '{"query":'}}]}),
        chunk({"tool_calls": [second, {"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        chunk({}, "tool_calls"),
    ]
    events = feed_all(ChunkMapper("m"), payloads)
    assert events[:-1] == [
        ToolCall(1, "call_a", "get_weather", ""),
        ToolCall(1, "call_a", "get_weather", '{"query":'),
        ToolCall(2, "call_b", "now", ""),
        ToolCall(2, "call_b", "now", "{}"),
        ToolCall(1, "call_a", "get_weather", '"Paris"}'),
    ]
    assert isinstance(events[-1], Complete) and events[-1].stop_reason == "tool_use"


def test_tool_calls_without_index() -> None:
    """Gemini-like: whole calls without ``index``; and continuations with neither index nor id."""
    payloads = [
        chunk({"tool_calls": [{"id": "f1", "function": {"name": "a", "arguments": '{"x":1}'}}]}),
        chunk({"tool_calls": [{"id": "f2", "function": {"name": "b", "arguments": '{"y":'}}]}),
        chunk({"tool_calls": [{"function": {"arguments": "2}"}}]}),
        chunk({}, "stop"),  # Gemini says stop after tool calls
    ]
    events = feed_all(ChunkMapper("m"), payloads)
    assert events[:-1] == [
        ToolCall(1, "f1", "a", ""),
        ToolCall(1, "f1", "a", '{"x":1}'),
        ToolCall(2, "f2", "b", ""),
        ToolCall(2, "f2", "b", '{"y":'),
        ToolCall(2, "f2", "b", "2}"),
    ]
    assert isinstance(events[-1], Complete) and events[-1].stop_reason == "tool_use"


def test_a_reused_index_with_a_new_id_is_a_new_call() -> None:
    payloads = [
        chunk({"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "a", "arguments": "{}"}}]}),
        chunk({"tool_calls": [{"index": 0, "id": "c2", "function": {"name": "b", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}),
    ]
    calls = [e for e in ChunkMapper("m").feed(payloads) if isinstance(e, ToolCall)]
    assert [(c.index, c.id, c.name, c.args_delta) for c in calls] == [
        (1, "c1", "a", ""),
        (1, "c1", "a", "{}"),
        (2, "c2", "b", ""),
        (2, "c2", "b", "{}"),
    ]


def test_a_call_without_id_gets_one() -> None:
    fragment = {"index": 0, "function": {"name": "a", "arguments": "{}"}}
    events = list(ChunkMapper("m").feed([chunk({"tool_calls": [fragment]})]))
    ids = {event.id for event in events if isinstance(event, ToolCall)}
    assert len(events) == 2 and len(ids) == 1 and ids.pop().startswith("call_")


def test_stream_without_finish_or_done_is_an_upstream_error() -> None:
    mapper = ChunkMapper("m")
    assert list(mapper.feed([chunk({"content": "cut"})])) == [Text(0, "cut")]
    with pytest.raises(GatewayError) as caught:
        mapper.complete()
    assert caught.value.type == "upstream_error"
    with pytest.raises(GatewayError, match="malformed"):
        list(ChunkMapper("m").feed([b"{not json"]))


@pytest.mark.parametrize(
    ("payload", "error_type"),
    [
        (b'{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}', "upstream_rate_limited"),
        (
            b'{"error":{"message":"no","type":"too_many_requests_error","code":"token_quota_exceeded"}}',
            "upstream_rate_limited",
        ),
        (b'{"error":{"message":"bad key","type":"invalid_request_error","code":"invalid_api_key"}}', "upstream_auth"),
        (b'{"error":{"message":"busy","type":"server_error","code":"overloaded"}}', "upstream_overloaded"),
        (b'{"error":{"message":"oops","type":"server_error","code":null}}', "upstream_error"),
        (
            b'{"error":{"message":"too long","type":"invalid_request_error","code":"context_length_exceeded"}}',
            "invalid_request",
        ),
        (b'[{"error":{"code":400,"message":"bad","status":"INVALID_ARGUMENT"}}]', "invalid_request"),
        (b'[{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED"}}]', "upstream_rate_limited"),
        (b'[{"error":{"code":503,"message":"later","status":"UNAVAILABLE"}}]', "upstream_overloaded"),
        (b'[{"error":{"code":504,"message":"slow","status":"DEADLINE_EXCEEDED"}}]', "upstream_timeout"),
        (b'[{"error":{"code":403,"message":"no","status":"PERMISSION_DENIED"}}]', "upstream_auth"),
        (b'{"error":{"code":429,"message":"numeric code only"}}', "upstream_rate_limited"),
        (b'{"error":"just a string"}', "upstream_error"),
    ],
)
def test_in_stream_errors_are_mapped_by_their_strings(payload: bytes, error_type: str) -> None:
    mapper = ChunkMapper("m")
    list(mapper.feed([chunk({"content": "partial"})]))
    with pytest.raises(GatewayError) as caught:
        list(mapper.feed([payload]))
    assert caught.value.type == error_type


def test_secrets_in_upstream_messages_are_redacted() -> None:
    payload = b'{"error":{"message":"Incorrect API key provided: sk-proj-abc***********wxyz.","type":"x"}}'
    with pytest.raises(GatewayError) as caught:
        list(ChunkMapper("m").feed([payload]))
    assert "sk-" not in caught.value.message and "[redacted]" in caught.value.message


def test_retry_delay() -> None:
    assert retry_delay(0, {"retry-after": "3"}) == 3.0
    assert retry_delay(0, {"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_delay(5, {"retry-after": "0"}) == 0.0
    for attempt, ceiling in [(0, 0.5), (1, 1.0), (2, 2.0), (4, 8.0), (9, 8.0)]:
        for headers in ({}, {"retry-after": "120"}, {"retry-after": "soon"}):
            assert 0.75 * ceiling <= retry_delay(attempt, headers) <= ceiling


# --- the httpx client against respx -----------------------------------------------------------------------------

BASE = "https://llm.test/v1"


def sse(*payloads: bytes) -> bytes:
    return b"".join(b"data: " + payload + b"\n\n" for payload in payloads)


def streamed(*pieces: bytes) -> httpx.Response:
    async def body() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body())


@pytest.fixture
async def provider() -> AsyncIterator[OpenAICompatibleProvider]:
    opened = OpenAICompatibleProvider(BASE + "/", "sk-test", idle_timeout=5, max_retries=2)
    yield opened
    await opened.close()


@pytest.fixture
def upstream() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router


async def collect(provider: OpenAICompatibleProvider, prompt: str = "hi", **fields: Any) -> list[Event]:
    return [event async for event in provider.stream(request([{"role": "user", "content": prompt}], **fields))]


async def failure(provider: OpenAICompatibleProvider) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        await collect(provider)
    return caught.value


HELLO = sse(chunk({"content": "Hello"}), chunk({}, "stop"), chunk(usage={"prompt_tokens": 3, "completion_tokens": 1}))


async def test_request_and_a_plain_answer(provider: OpenAICompatibleProvider, upstream: respx.MockRouter) -> None:
    route = upstream.post("/chat/completions").mock(return_value=streamed(HELLO + b"data: [DONE]\n\n"))
    events = await collect(provider, temperature=0.5)
    assert events == [Text(0, "Hello"), Usage(3, 1), Complete("Hello", "end_turn", TokenUsage(3, 1), "gpt-x-2025")]
    sent = route.calls.last.request
    assert sent.headers["authorization"] == "Bearer sk-test" and sent.headers["content-type"] == "application/json"
    body = json.loads(sent.content)
    assert body["model"] == "gpt-test" and body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["temperature"] == 0.5 and body["messages"] == [{"role": "user", "content": "hi"}]


async def test_chunked_crlf_frames(provider: OpenAICompatibleProvider, upstream: respx.MockRouter) -> None:
    wire = (HELLO + b": keep-alive\n\ndata: [DONE]\n\n").replace(b"\n", b"\r\n")
    pieces = [wire[i : i + 7] for i in range(0, len(wire), 7)]  # splits frames, and \r from \n
    upstream.post("/chat/completions").mock(return_value=streamed(*pieces))
    assert await collect(provider) == [
        Text(0, "Hello"),
        Usage(3, 1),
        Complete("Hello", "end_turn", TokenUsage(3, 1), "gpt-x-2025"),
    ]


async def test_tool_fragments_without_index(provider: OpenAICompatibleProvider, upstream: respx.MockRouter) -> None:
    wire = sse(
        chunk(
            {"tool_calls": [{"id": "fc_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}
        ),
        chunk({"tool_calls": [{"function": {"arguments": '{"query":'}}]}),
        chunk({"tool_calls": [{"function": {"arguments": '"Paris"}'}}]}),
        chunk({}, "tool_calls"),
        b"[DONE]",
    )
    upstream.post("/chat/completions").mock(return_value=streamed(wire))
    events = await collect(provider)
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert {(c.index, c.id, c.name) for c in calls} == {(1, "fc_1", "get_weather")}
    assert json.loads("".join(c.args_delta for c in calls)) == {"query": "Paris"}
    assert isinstance(events[-1], Complete) and events[-1].stop_reason == "tool_use"


async def test_mid_stream_error_frame(provider: OpenAICompatibleProvider, upstream: respx.MockRouter) -> None:
    wire = sse(
        chunk({"content": "par"}),
        b'{"error":{"message":"Rate limited","type":"requests","code":"rate_limit_exceeded"}}',
    )
    upstream.post("/chat/completions").mock(return_value=streamed(wire))
    seen: list[Event] = []
    with pytest.raises(GatewayError) as caught:
        async for event in provider.stream(request([{"role": "user", "content": "hi"}])):
            seen.append(event)
    assert seen == [Text(0, "par")]
    assert caught.value.type == "upstream_rate_limited" and caught.value.retry_after == 1.0


@pytest.mark.parametrize(
    ("status", "error_type"), [(400, "invalid_request"), (429, "upstream_rate_limited"), (403, "upstream_auth")]
)
async def test_gemini_error_array_body(upstream: respx.MockRouter, status: int, error_type: str) -> None:
    body = [{"error": {"code": status, "message": "API key not valid", "status": "INVALID_ARGUMENT"}}]
    route = upstream.post("/chat/completions").mock(
        return_value=httpx.Response(status, json=body, headers={"retry-after": "4"})
    )
    provider = OpenAICompatibleProvider(BASE, "AIzaKey", idle_timeout=5, max_retries=0)
    try:
        error = await failure(provider)
    finally:
        await provider.close()
    assert error.type == error_type, "the HTTP status decides"
    assert "API key not valid" in error.message and route.call_count == 1
    assert error.retry_after == (4.0 if status == 429 else None)


async def test_error_array_with_a_200(provider: OpenAICompatibleProvider, upstream: respx.MockRouter) -> None:
    body = [{"error": {"code": 429, "message": "Resource exhausted", "status": "RESOURCE_EXHAUSTED"}}]
    upstream.post("/chat/completions").mock(return_value=httpx.Response(200, json=body))
    error = await failure(provider)
    assert error.type == "upstream_rate_limited" and "Resource exhausted" in error.message


async def test_429_with_retry_after_is_retried(provider: OpenAICompatibleProvider, upstream: respx.MockRouter) -> None:
    limited = httpx.Response(429, headers={"retry-after": "0"}, json={"error": {"message": "slow", "type": "requests"}})
    route = upstream.post("/chat/completions").mock(side_effect=[limited, streamed(HELLO + b"data: [DONE]\n\n")])
    events = await collect(provider)
    assert route.call_count == 2 and events[0] == Text(0, "Hello")


async def test_retries_end_with_the_last_error(upstream: respx.MockRouter) -> None:
    route = upstream.post("/chat/completions").mock(
        return_value=httpx.Response(503, headers={"retry-after-ms": "1"}, json={"error": {"message": "busy"}})
    )
    provider = OpenAICompatibleProvider(BASE, "k", idle_timeout=5, max_retries=3)
    try:
        error = await failure(provider)
    finally:
        await provider.close()
    assert route.call_count == 4 and error.type == "upstream_overloaded" and error.retry_after == 5.0


async def test_client_errors_are_not_retried(provider: OpenAICompatibleProvider, upstream: respx.MockRouter) -> None:
    body = {"error": {"message": "Incorrect API key provided: sk-abc*****1234", "type": "invalid_request_error"}}
    route = upstream.post("/chat/completions").mock(return_value=httpx.Response(401, json=body))
    error = await failure(provider)
    assert route.call_count == 1 and error.type == "upstream_auth" and "sk-abc" not in error.message


async def test_connection_failures(upstream: respx.MockRouter) -> None:
    route = upstream.post("/chat/completions").mock(side_effect=httpx.ConnectError("refused"))
    provider = OpenAICompatibleProvider(BASE, "k", idle_timeout=5, max_retries=1)
    try:
        error = await failure(provider)
        assert error.type == "upstream_error" and route.call_count == 2
        route.mock(side_effect=httpx.ReadTimeout("silence"))
        assert (await failure(provider)).type == "upstream_timeout"
    finally:
        await provider.close()


async def test_a_cut_stream_is_an_upstream_error(
    provider: OpenAICompatibleProvider, upstream: respx.MockRouter
) -> None:
    upstream.post("/chat/completions").mock(return_value=streamed(sse(chunk({"content": "cut"}))))
    error = await failure(provider)
    assert error.type == "upstream_error" and "[DONE]" in error.message


async def test_a_stream_ending_after_its_finish_without_done_completes(
    provider: OpenAICompatibleProvider, upstream: respx.MockRouter
) -> None:
    upstream.post("/chat/completions").mock(return_value=streamed(HELLO))
    events = await collect(provider)
    assert isinstance(events[-1], Complete) and events[-1].text == "Hello"


async def test_an_injected_client_is_left_open() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=HELLO)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        provider = OpenAICompatibleProvider(BASE, "k", idle_timeout=5, max_retries=0, client=client)
        assert [e async for e in provider.stream(request([{"role": "user", "content": "x"}]))][0] == Text(0, "Hello")
        await provider.close()
        assert not client.is_closed


# --- the registry -----------------------------------------------------------------------------------------------


async def test_registry_routes_vendor_prefixes() -> None:
    from tests.conftest import gateway_settings

    settings = gateway_settings("http://127.0.0.1:9", openai_api_key="k1", cerebras_api_key="k2")
    providers = Providers.from_settings(settings)
    try:
        assert providers.resolve("openai/gpt-4o") == (providers.vendors["openai"], "gpt-4o")
        assert providers.resolve("cerebras/llama-3.3-70b") == (providers.vendors["cerebras"], "llama-3.3-70b")
        assert providers.resolve("claude-sonnet-4-6") == (providers.claude, "claude-sonnet-4-6")
        assert providers.resolve("someone/else") == (providers.claude, "someone/else")
        with pytest.raises(GatewayError, match="GOOGLE_API_KEY is not set") as caught:
            providers.resolve("gemini/gemini-2.5-flash")
        assert caught.value.type == "unavailable"
        with pytest.raises(InvalidRequest):
            providers.resolve("openai/")
    finally:
        await providers.close()


# --- end to end: the gateway on uvicorn, calling the emulator ------------------------------------------------------

VENDORS = ["openai/gpt-test", "cerebras/llama-test", "gemini/gemini-test"]


def vendor_settings(emulator: Emulator) -> dict[str, Any]:
    return {
        "openai_api_key": EMULATOR_KEY,
        "openai_base_url": emulator.url + "/v1",
        "cerebras_api_key": EMULATOR_KEY,
        "cerebras_base_url": emulator.url + "/v1",
        "google_api_key": EMULATOR_KEY,
        "google_base_url": emulator.url + "/v1/",
    }


@pytest.fixture
async def gateway(gateway_factory: GatewayFactory, emulator: Emulator) -> AsyncIterator[str]:
    async with gateway_factory(**vendor_settings(emulator)) as url:
        yield url


async def start_task(client: httpx.AsyncClient, body: dict[str, Any]) -> str:
    response = await client.post("/api/claude/prompt/async", json=body)
    assert response.status_code == 202, response.text
    task_id: str = response.json()["task_id"]
    return task_id


@pytest.mark.parametrize("model", VENDORS)
async def test_prompt_through_each_vendor(gateway: str, emulator: Emulator, model: str) -> None:
    prompt = "Explain rivers [emu:deltas=12]"
    async with httpx.AsyncClient(base_url=gateway) as client:
        response = await client.post(
            "/api/claude/prompt",
            json={"prompt": prompt, "model": model, "system_prompt": "be kind", "temperature": 0.3},
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["response"] == emulated_text(prompt, 12) and body["stop_reason"] == "end_turn"
    assert body["usage"]["output_tokens"] == 12 and body["usage"]["input_tokens"] > 0
    assert body["model"] == model
    assert emulator.stats.chat_completions == 1 and emulator.stats.messages == 0
    sent = json.loads(emulator.stats.bodies[-1])
    assert sent["model"] == model.split("/", 1)[1] and sent["stream_options"] == {"include_usage": True}
    assert sent["messages"] == [{"role": "system", "content": "be kind"}, {"role": "user", "content": prompt}]
    assert sent["temperature"] == 0.3
    assert sent["max_completion_tokens" if model.startswith("openai/") else "max_tokens"] == 4096


def text_of(dialect: str, got: list[Frame]) -> tuple[str, dict[str, Any] | None]:
    """The streamed text and the reported usage, read the way each dialect's client reads them."""
    if dialect == "native":
        usage = [f.json() for f in got if f.event == "usage"]
        return "".join(f.json()["chunk"] for f in got if f.event == "chunk"), usage[-1] if usage else None
    if dialect == "text":
        return "".join(f.data for f in got if f.event == "message" and f.data != "[DONE]"), None
    payloads = [f.json() for f in got if f.data != "[DONE]"]
    if dialect == "tanstack":
        done = [p for p in payloads if p["type"] == "done"]
        return "".join(p["delta"] for p in payloads if p["type"] == "content"), done[0]["usage"] if done else None
    finished = [p for p in payloads if p["type"] == "RUN_FINISHED"]
    text = "".join(p["delta"] for p in payloads if p["type"] == "TEXT_MESSAGE_CONTENT")
    return text, finished[0]["usage"][0] if finished else None


@pytest.mark.parametrize("dialect", ["native", "text", "tanstack", "agui"])
@pytest.mark.parametrize("model", VENDORS)
async def test_subscribe_in_each_dialect(gateway: str, model: str, dialect: str) -> None:
    prompt = f"stream {dialect} [emu:deltas=15]"
    async with httpx.AsyncClient(base_url=gateway) as client:
        task_id = await start_task(client, {"prompt": prompt, "model": model})
        got = await read_all(client, f"/api/claude/subscribe/{task_id}?format={dialect}")
        status = (await client.get(f"/api/claude/task/{task_id}")).json()
    text, usage = text_of(dialect, got)
    assert text == emulated_text(prompt, 15)
    if dialect != "text":
        assert usage is not None and 15 in usage.values(), usage
    assert status["status"] == "completed" and status["result"]["response"] == text


@pytest.mark.parametrize("model", VENDORS)
async def test_tool_calls_keep_one_id(gateway: str, model: str) -> None:
    prompt = "weather in Paris? [emu:tool=get_weather] [emu:deltas=3]"
    async with httpx.AsyncClient(base_url=gateway) as client:
        task_id = await start_task(client, {"prompt": prompt, "model": model, "tools": [WEATHER_TOOL]})
        native = await read_all(client, f"/api/claude/subscribe/{task_id}")
        agui = [f.json() for f in await read_all(client, f"/api/claude/subscribe/{task_id}?format=agui")]
    calls = [f.json() for f in native if f.event == "tool_call"]
    assert {(c["index"], c["id"], c["name"]) for c in calls} == {(1, emulated_call_id(prompt), "get_weather")}
    assert calls[0]["args_delta"] == "" and len(calls) == 3
    assert json.loads("".join(c["args_delta"] for c in calls)) == emulated_tool_input(prompt)
    assert native[-1].json()["stop_reason"] == "tool_use"
    starts = [e for e in agui if e["type"] == "TOOL_CALL_START"]
    assert [(s["toolCallId"], s["toolCallName"]) for s in starts] == [(emulated_call_id(prompt), "get_weather")]
    args = "".join(e["delta"] for e in agui if e["type"] == "TOOL_CALL_ARGS")
    assert json.loads(args) == emulated_tool_input(prompt)


async def test_tool_results_round_trip_like_claude(gateway: str, emulator: Emulator) -> None:
    messages = [
        {"role": "user", "content": "weather? [emu:tool=get_weather]"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"query": "Paris"}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "sunny [emu:deltas=4]"}],
        },
    ]
    async with httpx.AsyncClient(base_url=gateway) as client:
        answers = [
            await client.post(
                "/api/claude/prompt", json={"messages": messages, "model": model, "tools": [WEATHER_TOOL]}
            )
            for model in ("openai/gpt-test", "claude-sonnet-4-6")
        ]
    assert [a.json()["response"] for a in answers] == [emulated_text("sunny [emu:deltas=4]", 4)] * 2
    assert emulator.stats.chat_completions == 1 and emulator.stats.messages == 1
    sent = next(json.loads(body) for body in emulator.stats.bodies if b'"role":"tool"' in body)
    assert sent["messages"][-1] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny [emu:deltas=4]"}
    assert sent["tools"][0]["function"]["name"] == "get_weather"


@pytest.mark.parametrize(("fault", "status", "error_type", "retry_after"), UPSTREAM_FAULTS)
@pytest.mark.parametrize("model", ["openai/gpt-test", "gemini/gemini-test"])
async def test_upstream_faults(
    gateway: str, model: str, fault: str, status: int, error_type: str, retry_after: str | None
) -> None:
    prompt = f"fault [emu:fault={fault}] [emu:retry_after=7] [emu:deltas=10]"
    async with httpx.AsyncClient(base_url=gateway) as client:
        sync = await client.post("/api/claude/prompt", json={"prompt": prompt, "model": model})
        task_id = await start_task(client, {"prompt": prompt, "model": model})
        got = await read_all(client, f"/api/claude/subscribe/{task_id}")
        task = (await client.get(f"/api/claude/task/{task_id}")).json()
    assert sync.status_code == status, sync.text
    assert sync.json()["type"] == error_type and sync.headers.get("retry-after") == retry_after
    assert EMULATOR_KEY not in sync.text
    assert got[-1].event == "error" and got[-1].json()["type"] == error_type
    assert task["status"] == "failed" and task["error"]["type"] == error_type


async def test_upstream_stall_is_a_timeout(gateway_factory: GatewayFactory, emulator: Emulator) -> None:
    settings = {**vendor_settings(emulator), "upstream_idle_timeout": 0.3}
    async with gateway_factory(**settings) as url, httpx.AsyncClient(base_url=url) as client:
        task_id = await start_task(client, {"prompt": "stall [emu:fault=stall] [emu:after=2]", "model": "cerebras/x"})
        got = await read_all(client, f"/api/claude/subscribe/{task_id}")
    assert len([f for f in got if f.event == "chunk"]) == 2
    assert got[-1].event == "error" and got[-1].json()["type"] == "upstream_timeout"


async def test_requests_are_retried_but_not_streams(gateway_factory: GatewayFactory, emulator: Emulator) -> None:
    settings = {**vendor_settings(emulator), "upstream_max_retries": 2}
    async with gateway_factory(**settings) as url, httpx.AsyncClient(base_url=url) as client:
        limited = await client.post(
            "/api/claude/prompt", json={"prompt": "[emu:fault=429] [emu:retry_after=0]", "model": "openai/m"}
        )
        assert limited.json()["type"] == "upstream_rate_limited" and emulator.stats.chat_completions == 3
        dropped = await client.post("/api/claude/prompt", json={"prompt": "[emu:fault=drop]", "model": "openai/m"})
        assert dropped.json()["type"] == "upstream_error" and emulator.stats.chat_completions == 4


async def test_a_vendor_without_a_key_is_unavailable(gateway_factory: GatewayFactory, emulator: Emulator) -> None:
    settings: dict[str, Any] = {"openai_api_key": EMULATOR_KEY, "openai_base_url": emulator.url + "/v1"}
    async with gateway_factory(**settings) as url, httpx.AsyncClient(base_url=url) as client:
        missing = await client.post("/api/claude/prompt", json={"prompt": "hi", "model": "gemini/gemini-test"})
        claude = await client.post("/api/claude/prompt", json={"prompt": "hi [emu:deltas=2]"})
        openai = await client.post("/api/claude/prompt", json={"prompt": "hi [emu:deltas=2]", "model": "openai/x"})
    assert missing.status_code == 503 and missing.json()["type"] == "unavailable"
    assert "GOOGLE_API_KEY is not set" in missing.json()["error"]
    assert claude.json()["response"] == openai.json()["response"] == emulated_text("hi [emu:deltas=2]", 2)
    assert emulator.stats.chat_completions == 1 and emulator.stats.messages == 1
