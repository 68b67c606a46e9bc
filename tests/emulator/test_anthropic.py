"""The Anthropic emulator, driven over real loopback HTTP by the official SDK (and by httpx for raw frames)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import httpx2
import pytest
from anthropic.types import Message, MessageParam, TextBlock, ToolUseBlock
from starlette.applications import Starlette
from starlette.types import Message as ASGIMessage

from llm_gateway.emulator import (
    EmulatorStats,
    create_emulator_app,
    emulated_deltas,
    emulated_text,
    emulated_tool_id,
    emulated_tool_input,
)
from tests.servers import serve

# Not a real model id: the SDK warns (an error here) on deprecated ones, such as claude-sonnet-4-5.
MODEL = "claude-emulated-1"


def user(text: str) -> list[MessageParam]:
    return [{"role": "user", "content": text}]


@pytest.fixture
def app() -> Starlette:
    return create_emulator_app()


@pytest.fixture
async def base_url(app: Starlette) -> AsyncIterator[str]:
    async with serve(app) as url:
        yield url


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(api_key="test-key", base_url=base_url, max_retries=0) as client:
        yield client


@pytest.fixture
async def http(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url) as http:
        yield http


async def sse_events(http: httpx.AsyncClient, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """POST a streaming request and return its (event, data) pairs, checking each frame's framing."""
    response = await http.post("/v1/messages", json={"model": MODEL, "max_tokens": 1000, "stream": True, **body})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["request-id"].startswith("req_emu_")
    assert response.text.endswith("\n\n")
    events = []
    for frame in response.text.removesuffix("\n\n").split("\n\n"):
        event_line, data_line = frame.split("\n")
        event, data = event_line.removeprefix("event: "), json.loads(data_line.removeprefix("data: "))
        assert data["type"] == event
        events.append((event, data))
    return events


# --- answers --------------------------------------------------------------------------------------------------


async def test_stream_text_equals_emulated_deltas(client: anthropic.AsyncAnthropic) -> None:
    prompt = "Tell me a story [emu:deltas=30]"
    async with client.messages.stream(model=MODEL, max_tokens=1000, messages=user(prompt)) as stream:
        texts = [text async for text in stream.text_stream]
        message = await stream.get_final_message()
    assert texts == emulated_deltas(prompt, 30)
    assert isinstance(block := message.content[0], TextBlock) and block.text == emulated_text(prompt, 30)
    assert len(message.content) == 1
    assert message.model == MODEL and message.id.startswith("msg_emu_")
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == len(prompt) // 4
    assert message.usage.output_tokens == 30
    assert stream.request_id is not None and stream.request_id.startswith("req_emu_")


async def test_stream_frames_follow_the_wire_order(http: httpx.AsyncClient) -> None:
    events = await sse_events(http, {"messages": user("hi [emu:deltas=13]")})
    names = [event for event, _ in events]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * 13,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"] == {"input_tokens": 4, "output_tokens": 1}
    assert events[12][1]["delta"] == {"type": "text_delta", "text": emulated_deltas("hi [emu:deltas=13]", 13)[9]}
    assert events[-2][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 13},
    }


async def test_app_defaults_to_fifty_deltas_without_streaming(client: anthropic.AsyncAnthropic) -> None:
    message = await client.messages.create(
        model=MODEL, max_tokens=1000, messages=user("Hi"), extra_body={"temperature": 0.5}
    )
    assert isinstance(block := message.content[0], TextBlock) and block.text == emulated_text("Hi", 50)
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert (message.usage.input_tokens, message.usage.output_tokens) == (1, 50)
    assert message.model == MODEL and message.id.startswith("msg_emu_")


async def test_input_tokens_count_all_request_text(client: anthropic.AsyncAnthropic) -> None:
    messages: list[MessageParam] = [
        {"role": "user", "content": "a" * 40},
        {"role": "assistant", "content": [{"type": "text", "text": "b" * 40}]},
        {"role": "user", "content": "c" * 40},
    ]
    message = await client.messages.create(model=MODEL, max_tokens=10, system="d" * 40, messages=messages)
    assert message.usage.input_tokens == 40


async def final_message(
    client: anthropic.AsyncAnthropic, prompt: str, max_tokens: int, stream: bool
) -> tuple[Message, list[str] | None]:
    """The answer, streamed (with its text deltas) or not."""
    if not stream:
        return await client.messages.create(model=MODEL, max_tokens=max_tokens, messages=user(prompt)), None
    async with client.messages.stream(model=MODEL, max_tokens=max_tokens, messages=user(prompt)) as s:
        texts = [text async for text in s.text_stream]
        return await s.get_final_message(), texts


@pytest.mark.parametrize("stream", [True, False])
async def test_max_tokens_truncates(client: anthropic.AsyncAnthropic, stream: bool) -> None:
    prompt = "Go on [emu:deltas=10] [emu:tool=search]"
    message, texts = await final_message(client, prompt, 4, stream)
    if stream:
        assert texts == emulated_deltas(prompt, 10)[:4]
    assert [block.type for block in message.content] == ["text"]
    assert isinstance(block := message.content[0], TextBlock) and block.text == "".join(emulated_deltas(prompt, 10)[:4])
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 4


@pytest.mark.parametrize("stream", [True, False])
async def test_tool_use(client: anthropic.AsyncAnthropic, stream: bool) -> None:
    prompt = "Weather in Paris? [emu:tool=get_weather] [emu:deltas=5]"
    message, _ = await final_message(client, prompt, 100, stream)
    text, tool = message.content
    assert isinstance(text, TextBlock) and text.text == emulated_text(prompt, 5)
    assert isinstance(tool, ToolUseBlock)
    assert (tool.id, tool.name) == (emulated_tool_id(prompt), "get_weather")
    assert tool.input == emulated_tool_input(prompt) == {"query": "Weather in Paris?"}
    assert message.stop_reason == "tool_use"
    assert message.usage.output_tokens == 5 + 3


async def test_tool_use_frames(http: httpx.AsyncClient) -> None:
    prompt = "Weather in Paris? [emu:tool=get_weather] [emu:deltas=2]"
    events = await sse_events(http, {"messages": user(prompt)})
    tool_events = [data for _, data in events if data.get("index") == 1]
    assert tool_events[0] == {
        "type": "content_block_start",
        "index": 1,
        "content_block": {"type": "tool_use", "id": emulated_tool_id(prompt), "name": "get_weather", "input": {}},
    }
    fragments = [data["delta"]["partial_json"] for data in tool_events[1:-1]]
    assert len(fragments) == 3 and fragments[0] == ""
    assert json.loads("".join(fragments)) == emulated_tool_input(prompt)
    assert tool_events[-1] == {"type": "content_block_stop", "index": 1}


async def test_prompt_is_the_last_user_message(client: anthropic.AsyncAnthropic) -> None:
    blocks: list[MessageParam] = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "answer"},
        {"role": "user", "content": [{"type": "text", "text": "second "}, {"type": "text", "text": "part"}]},
    ]
    message = await client.messages.create(model=MODEL, max_tokens=100, messages=blocks)
    assert isinstance(block := message.content[0], TextBlock) and block.text == emulated_text("second part", 50)

    results: list[MessageParam] = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "w", "input": {}}]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18°C "},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "sunny"}]},
            ],
        },
        {"role": "assistant", "content": "It is"},
    ]
    message = await client.messages.create(model=MODEL, max_tokens=100, messages=results)
    assert isinstance(block := message.content[0], TextBlock) and block.text == emulated_text("18°C sunny", 50)


@pytest.mark.parametrize("stream", [True, False])
async def test_stop_sequences_end_the_text_before_the_first_one(client: anthropic.AsyncAnthropic, stream: bool) -> None:
    prompt = "Count [emu:deltas=20] [emu:tool=search]"
    text = emulated_text(prompt, 20)
    first, later = emulated_deltas(prompt, 20)[5], emulated_deltas(prompt, 20)[9]
    stop_sequences = [later.strip(), "never in it", first.strip()]
    message: Message
    if stream:
        async with client.messages.stream(
            model=MODEL, max_tokens=100, messages=user(prompt), stop_sequences=stop_sequences
        ) as s:
            texts = [t async for t in s.text_stream]
            message = await s.get_final_message()
        assert "".join(texts) == text[: text.find(first.strip())]
    else:
        message = await client.messages.create(
            model=MODEL, max_tokens=100, messages=user(prompt), stop_sequences=stop_sequences
        )
    assert [block.type for block in message.content] == ["text"]  # no tool call after a stop sequence
    assert isinstance(block := message.content[0], TextBlock) and block.text == text[: text.find(first.strip())]
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", first.strip())


async def test_count_tokens_is_the_input_tokens_of_the_same_message(client: anthropic.AsyncAnthropic) -> None:
    messages: list[MessageParam] = [
        {"role": "user", "content": "a" * 40},
        {"role": "assistant", "content": [{"type": "text", "text": "b" * 40}]},
        {"role": "user", "content": "c" * 41},
    ]
    counted = await client.messages.count_tokens(model=MODEL, system="d" * 40, messages=messages)
    message = await client.messages.create(model=MODEL, max_tokens=10, system="d" * 40, messages=messages)
    assert counted.input_tokens == message.usage.input_tokens == 40


async def test_count_tokens_faults_and_bad_bodies(client: anthropic.AsyncAnthropic, http: httpx.AsyncClient) -> None:
    with pytest.raises(anthropic.RateLimitError):
        await client.messages.count_tokens(model=MODEL, messages=user("[emu:fault=429]"))
    response = await http.post("/v1/messages/count_tokens", json={"model": MODEL, "messages": []})
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"


async def test_delay_paces_the_deltas(client: anthropic.AsyncAnthropic) -> None:
    started = time.perf_counter()
    async with client.messages.stream(
        model=MODEL, max_tokens=100, messages=user("[emu:deltas=5][emu:delay_ms=40]")
    ) as s:
        await s.until_done()
    assert time.perf_counter() - started >= 4 * 0.04


# --- faults ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(
    ("fault", "error_class", "status", "error_type"),
    [
        ("401", anthropic.AuthenticationError, 401, "authentication_error"),
        ("429", anthropic.RateLimitError, 429, "rate_limit_error"),
        ("500", anthropic.InternalServerError, 500, "api_error"),
        ("529", anthropic.OverloadedError, 529, "overloaded_error"),
    ],
)
async def test_http_faults(
    client: anthropic.AsyncAnthropic,
    fault: str,
    error_class: type[anthropic.APIStatusError],
    status: int,
    error_type: str,
    stream: bool,
) -> None:
    messages = user(f"hello [emu:fault={fault}]")
    with pytest.raises(anthropic.APIStatusError) as caught:
        if stream:
            async with client.messages.stream(model=MODEL, max_tokens=100, messages=messages):
                pytest.fail("the stream should not open")
        else:
            await client.messages.create(model=MODEL, max_tokens=100, messages=messages)
    error = caught.value
    assert type(error) is error_class
    assert (error.status_code, error.type) == (status, error_type)
    assert error.request_id is not None and error.request_id.startswith("req_emu_")
    assert isinstance(error.body, dict) and error.body["request_id"] == error.request_id
    assert error.response.headers.get("retry-after") == ("1" if status == 429 else None)


async def test_retry_after_directive(client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.RateLimitError) as caught:
        await client.messages.create(model=MODEL, max_tokens=100, messages=user("[emu:fault=429][emu:retry_after=7]"))
    assert caught.value.response.headers["retry-after"] == "7"


async def test_error_midstream(client: anthropic.AsyncAnthropic) -> None:
    prompt = "hello [emu:fault=error_midstream] [emu:after=5]"
    texts: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        async with client.messages.stream(model=MODEL, max_tokens=100, messages=user(prompt)) as stream:
            async for text in stream.text_stream:
                texts.append(text)
    assert texts == emulated_deltas(prompt, 50)[:5]
    assert type(caught.value) is anthropic.APIStatusError
    assert (caught.value.status_code, caught.value.type) == (200, "overloaded_error")


async def test_error_midstream_frames_end_the_stream(http: httpx.AsyncClient) -> None:
    events = await sse_events(http, {"messages": user("[emu:fault=error_midstream]")})
    assert [event for event, _ in events[-4:]] == ["content_block_delta"] * 3 + ["error"]
    assert events[-1][1] == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


async def test_error_midstream_without_streaming_is_overloaded(client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.OverloadedError):
        await client.messages.create(model=MODEL, max_tokens=100, messages=user("[emu:fault=error_midstream]"))


async def test_drop_breaks_the_connection(client: anthropic.AsyncAnthropic) -> None:
    prompt = "hello [emu:fault=drop] [emu:after=4]"
    texts: list[str] = []
    # The SDK does not wrap errors raised while reading a stream: the transport error surfaces as is.
    with pytest.raises(httpx2.RemoteProtocolError, match="incomplete chunked read"):
        async with client.messages.stream(model=MODEL, max_tokens=100, messages=user(prompt)) as stream:
            async for text in stream.text_stream:
                texts.append(text)
    assert texts == emulated_deltas(prompt, 50)[:4]


async def test_drop_without_streaming_is_a_connection_error(client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.APIConnectionError) as caught:
        await client.messages.create(model=MODEL, max_tokens=100, messages=user("[emu:fault=drop]"))
    assert isinstance(caught.value.__cause__, httpx2.RemoteProtocolError)


async def test_stall_sends_nothing_after_the_first_deltas(client: anthropic.AsyncAnthropic) -> None:
    prompt = "hello [emu:fault=stall] [emu:after=2]"
    texts: list[str] = []
    async with client.messages.stream(model=MODEL, max_tokens=100, messages=user(prompt)) as stream:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                async for text in stream.text_stream:
                    texts.append(text)
    assert texts == emulated_deltas(prompt, 50)[:2]


async def test_stall_ends_when_the_client_disconnects(app: Starlette) -> None:
    body = json.dumps({"model": MODEL, "max_tokens": 10, "stream": True, "messages": user("[emu:fault=stall]")})
    requests = [{"type": "http.request", "body": body.encode(), "more_body": False}]
    disconnect = asyncio.Event()
    sent: list[ASGIMessage] = []

    async def receive() -> ASGIMessage:
        if requests:
            return requests.pop()
        await disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(message: ASGIMessage) -> None:
        sent.append(message)
        if len(sent) == 1 + 3 + 3:  # start, message_start + content_block_start + ping, 3 deltas
            asyncio.get_running_loop().call_later(0.05, disconnect.set)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/messages",
        "raw_path": b"/v1/messages",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
    }
    async with asyncio.timeout(2):
        await app(scope, receive, send)
    assert disconnect.is_set()
    assert len(sent) == 7 and sent[-1]["more_body"] is True


# --- auth, validation, stats ----------------------------------------------------------------------------------


async def test_api_key_is_enforced() -> None:
    async with serve(create_emulator_app(api_key="s3cret", deltas=3)) as base_url:
        for client in (
            anthropic.AsyncAnthropic(api_key="s3cret", base_url=base_url, max_retries=0),  # x-api-key
            anthropic.AsyncAnthropic(auth_token="s3cret", base_url=base_url, max_retries=0),  # Authorization: Bearer
        ):
            async with client:
                message = await client.messages.create(model=MODEL, max_tokens=10, messages=user("hi"))
                assert message.usage.output_tokens == 3
        async with anthropic.AsyncAnthropic(api_key="wrong", base_url=base_url, max_retries=0) as client:
            with pytest.raises(anthropic.AuthenticationError) as caught:
                await client.messages.create(model=MODEL, max_tokens=10, messages=user("hi"))
            assert caught.value.type == "authentication_error"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}',
        b'{"model": "m", "max_tokens": 0, "messages": [{"role": "user", "content": "hi"}]}',
        b'{"model": "m", "max_tokens": 10, "messages": []}',
        b'{"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}], "temperature": 1.5}',
        b'{"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "[emu:deltas=many]"}]}',
        b'{"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "[emu:typo=1]"}]}',
    ],
)
async def test_bad_requests(http: httpx.AsyncClient, body: bytes) -> None:
    response = await http.post("/v1/messages", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert error["request_id"] == response.headers["request-id"]


async def test_bad_temperature_through_the_sdk(client: anthropic.AsyncAnthropic) -> None:
    # anthropic 2.12 has no `temperature` argument any more.
    with pytest.raises(anthropic.BadRequestError):
        await client.messages.create(model=MODEL, max_tokens=10, messages=user("hi"), extra_body={"temperature": 1.5})


async def test_index_and_unknown_paths(http: httpx.AsyncClient) -> None:
    response = await http.get("/")
    assert response.json() == {"name": "llm-gateway emulator"} and "request-id" in response.headers
    response = await http.get("/v1/nope")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"
    assert response.json()["request_id"] == response.headers["request-id"]


async def test_stats_count_requests_and_reset(
    app: Starlette, client: anthropic.AsyncAnthropic, http: httpx.AsyncClient
) -> None:
    stats = app.state.stats
    assert isinstance(stats, EmulatorStats) and stats.messages == 0
    await client.messages.create(model=MODEL, max_tokens=10, messages=user("hi"))
    with pytest.raises(anthropic.OverloadedError):
        await client.messages.create(model=MODEL, max_tokens=10, messages=user("[emu:fault=529]"))
    await http.post("/v1/messages", content=b"nonsense")
    assert stats.messages == 3
    assert (await http.get("/_emulator/stats")).json() == {
        "messages": 3,
        "chat_completions": 0,
        "piapi_creates": 0,
        "piapi_gets": 0,
    }
    assert (await http.post("/_emulator/reset")).status_code == 200
    assert stats.messages == 0
    assert (await http.get("/_emulator/stats")).json() == {
        "messages": 0,
        "chat_completions": 0,
        "piapi_creates": 0,
        "piapi_gets": 0,
    }
