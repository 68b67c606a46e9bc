"""The official anthropic SDK against the gateway, unchanged (API.md §4, drop-in): uvicorn serving the gateway,
which calls the emulator; every answer a task, re-read in the ``anthropic`` dialect from the middle."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types import Message, MessageParam, TextBlock, ToolParam, ToolUseBlock

from llm_gateway.anthropic_errors import AnthropicErrors
from llm_gateway.emulator import emulated_deltas, emulated_text, emulated_tool_id, emulated_tool_input
from tests.conftest import EMULATOR_KEY, Emulator, GatewayFactory
from tests.sse_client import Frame, frames, read_all

MODEL = "claude-emulated-1"  # not a real model id: the SDK warns (an error here) on deprecated ones
TOOLS: list[ToolParam] = [
    {"name": "get_weather", "description": "Current weather", "input_schema": {"type": "object", "properties": {}}}
]


def user(text: str) -> list[MessageParam]:
    return [{"role": "user", "content": text}]


@pytest.fixture
async def client(gateway: str) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=gateway, api_key="any key: the gateway is open", max_retries=0) as c:
        yield c


def text_of(frames_: list[Frame]) -> str:
    return "".join(
        f.json()["delta"]["text"]
        for f in frames_
        if f.event == "content_block_delta" and f.json()["delta"]["type"] == "text_delta"
    )


async def reread_from_the_middle(gateway: str, task_id: str, **headers: str) -> tuple[list[Frame], list[Frame], int]:
    """The task in the anthropic dialect, whole; then again after the middle frame's id; and where that cut is."""
    url = f"/api/claude/subscribe/{task_id}?format=anthropic"
    async with httpx.AsyncClient(base_url=gateway, headers=headers) as http:
        whole = await read_all(http, url)
        with_ids = [i for i, frame in enumerate(whole) if frame.id]
        cut = with_ids[len(with_ids) // 2]
        rest = await read_all(http, url, headers={"Last-Event-ID": whole[cut].id or ""})
    assert [(f.event, f.id, f.data) for f in whole[cut + 1 :]] == [(f.event, f.id, f.data) for f in rest]
    return whole, rest, cut


# --- answers ----------------------------------------------------------------------------------------------------


async def test_messages_stream_is_a_durable_task(client: anthropic.AsyncAnthropic, gateway: str) -> None:
    prompt = "Tell me a story [emu:deltas=30]"
    async with client.messages.stream(model=MODEL, max_tokens=1000, messages=user(prompt)) as stream:
        texts = [text async for text in stream.text_stream]
        message = await stream.get_final_message()
        task_id = stream.response.headers["x-task-id"]
    assert texts == emulated_deltas(prompt, 30)
    assert [block.type for block in message.content] == ["text"]
    assert isinstance(block := message.content[0], TextBlock) and block.text == emulated_text(prompt, 30)
    assert (message.id, message.model, message.stop_reason) == (f"msg_{task_id}", MODEL, "end_turn")
    assert (message.usage.input_tokens, message.usage.output_tokens) == (len(prompt) // 4, 30)

    whole, rest, cut = await reread_from_the_middle(gateway, task_id)
    assert text_of(whole) == emulated_text(prompt, 30)
    assert text_of(whole[: cut + 1]) + text_of(rest) == emulated_text(prompt, 30)
    assert rest[-1].event == "message_stop"


async def test_create_with_stream_gives_the_raw_events(client: anthropic.AsyncAnthropic, gateway: str) -> None:
    prompt = "Raw events [emu:deltas=8]"
    stream = await client.messages.create(model=MODEL, max_tokens=100, messages=user(prompt), stream=True)
    async with stream:
        events = [event async for event in stream]
    task_id = stream.response.headers["x-task-id"]
    assert [event.type for event in events] == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 8,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    whole, _, _ = await reread_from_the_middle(gateway, task_id)
    assert [frame.json() for frame in whole] == [event.to_dict() for event in events]


async def test_the_post_stream_and_the_subscribe_stream_are_the_same_frames(gateway: str) -> None:
    prompt = "Same frames [emu:deltas=12] [emu:tool=get_weather]"
    body = {"model": MODEL, "max_tokens": 100, "stream": True, "messages": user(prompt), "tools": TOOLS}
    async with httpx.AsyncClient(base_url=gateway) as http:
        async with http.stream("POST", "/v1/messages", json=body) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-cache"
            posted = [frame async for frame in frames(response)]
        task_id = response.headers["x-task-id"]
    whole, rest, cut = await reread_from_the_middle(gateway, task_id)
    assert [(f.event, f.id, f.data) for f in posted] == [(f.event, f.id, f.data) for f in whole]
    assert posted[-1].id is not None, "the last frame of each event carries its id"


async def test_a_dropped_stream_reads_on_from_its_last_id_while_the_answer_goes_on(gateway: str) -> None:
    prompt = "Drop me [emu:deltas=40] [emu:delay_ms=20]"
    body = {"model": MODEL, "max_tokens": 100, "stream": True, "messages": user(prompt)}
    seen: list[Frame] = []
    async with httpx.AsyncClient(base_url=gateway) as http:
        async with http.stream("POST", "/v1/messages", json=body) as response:
            async for frame in frames(response):
                seen.append(frame)
                if sum(f.event == "content_block_delta" for f in seen) == 10:
                    break  # the connection drops; the generation does not
        task_id = response.headers["x-task-id"]
        status = (await http.get(f"/api/claude/task/{task_id}")).json()["status"]
        last_id = next(f.id for f in reversed(seen) if f.id)
        rest = await read_all(
            http, f"/api/claude/subscribe/{task_id}?format=anthropic", headers={"Last-Event-ID": last_id}
        )
    assert status == "running"
    assert text_of(seen) + text_of(rest) == emulated_text(prompt, 40)
    assert [f.event for f in rest[-3:]] == ["content_block_stop", "message_delta", "message_stop"]


async def test_create_without_stream_waits_for_the_message(client: anthropic.AsyncAnthropic, gateway: str) -> None:
    prompt = "Whole answer [emu:deltas=20]"
    raw = await client.messages.with_raw_response.create(model=MODEL, max_tokens=100, messages=user(prompt))
    message = await raw.parse()
    task_id = raw.headers["x-task-id"]
    assert isinstance(block := message.content[0], TextBlock) and block.text == emulated_text(prompt, 20)
    assert (message.id, message.stop_reason, message.stop_sequence) == (f"msg_{task_id}", "end_turn", None)
    assert message.usage.output_tokens == 20
    whole, _, _ = await reread_from_the_middle(gateway, task_id)
    assert text_of(whole) == emulated_text(prompt, 20)


@pytest.mark.parametrize("stream", [True, False])
async def test_tool_use(client: anthropic.AsyncAnthropic, emulator: Emulator, stream: bool) -> None:
    prompt = "Weather in Paris? [emu:tool=get_weather] [emu:deltas=5]"
    arguments: dict[str, Any] = {"tools": TOOLS, "tool_choice": {"type": "auto"}}
    message: Message
    if stream:
        async with client.messages.stream(model=MODEL, max_tokens=100, messages=user(prompt), **arguments) as s:
            message = await s.get_final_message()
    else:
        message = await client.messages.create(model=MODEL, max_tokens=100, messages=user(prompt), **arguments)
    text, tool = message.content
    assert isinstance(text, TextBlock) and text.text == emulated_text(prompt, 5)
    assert isinstance(tool, ToolUseBlock)
    assert (tool.id, tool.name, tool.input) == (emulated_tool_id(prompt), "get_weather", emulated_tool_input(prompt))
    assert message.stop_reason == "tool_use"
    sent = json.loads(emulator.stats.bodies[-1])
    assert sent["tools"] == TOOLS and sent["tool_choice"] == {"type": "auto"}


async def test_the_request_reaches_the_upstream(client: anthropic.AsyncAnthropic, emulator: Emulator) -> None:
    history: list[MessageParam] = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18°C"}]},
    ]
    system: list[anthropic.types.TextBlockParam] = [
        {"type": "text", "text": "Be terse.", "cache_control": {"type": "ephemeral"}}
    ]
    await client.messages.create(
        model=MODEL,
        max_tokens=2000,
        system=system,
        messages=history,
        stop_sequences=["\n\nHuman:"],
        metadata={"user_id": "user-42"},
        thinking={"type": "enabled", "budget_tokens": 1024},
        extra_body={"temperature": 0.5, "top_p": 0.9, "top_k": 40},
    )
    sent = json.loads(emulator.stats.bodies[-1])
    assert sent["model"] == MODEL and sent["max_tokens"] == 2000 and sent["messages"] == history
    assert sent["system"] == system
    assert sent["stop_sequences"] == ["\n\nHuman:"] and sent["metadata"] == {"user_id": "user-42"}
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert (sent["temperature"], sent["top_p"], sent["top_k"]) == (0.5, 0.9, 40)


@pytest.mark.parametrize("stream", [True, False])
async def test_the_stop_sequence_reaches_the_client(client: anthropic.AsyncAnthropic, stream: bool) -> None:
    prompt = "Stop early [emu:deltas=20]"
    stop = emulated_deltas(prompt, 20)[6].strip()
    expected = emulated_text(prompt, 20)[: emulated_text(prompt, 20).find(stop)]
    message: Message
    if stream:
        async with client.messages.stream(
            model=MODEL, max_tokens=100, messages=user(prompt), stop_sequences=[stop]
        ) as s:
            message = await s.get_final_message()
    else:
        message = await client.messages.create(
            model=MODEL, max_tokens=100, messages=user(prompt), stop_sequences=[stop]
        )
    assert isinstance(block := message.content[0], TextBlock) and block.text == expected
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", stop)


async def test_count_tokens_asks_the_upstream(client: anthropic.AsyncAnthropic, emulator: Emulator) -> None:
    messages = user("a" * 40 + " count me")
    counted = await client.messages.count_tokens(model=MODEL, system="b" * 40, messages=messages)
    message = await client.messages.create(model=MODEL, max_tokens=5, system="b" * 40, messages=messages)
    assert counted.input_tokens == message.usage.input_tokens == (40 + 49) // 4
    with pytest.raises(anthropic.RateLimitError):
        await client.messages.count_tokens(model=MODEL, messages=user("[emu:fault=429]"))


async def test_count_tokens_is_for_claude_models(gateway_factory: GatewayFactory, emulator: Emulator) -> None:
    async with gateway_factory(openai_api_key=EMULATOR_KEY, openai_base_url=emulator.url + "/v1") as url:
        async with anthropic.AsyncAnthropic(base_url=url, api_key="k", max_retries=0) as client:
            with pytest.raises(anthropic.BadRequestError, match="count_tokens is for Claude models"):
                await client.messages.count_tokens(model="openai/gpt-x", messages=user("hi"))
            message = await client.messages.create(
                model="openai/gpt-x", max_tokens=10, messages=user("hi [emu:deltas=3]")
            )
    assert isinstance(block := message.content[0], TextBlock) and block.text == emulated_text("hi [emu:deltas=3]", 3)


# --- errors, in the SDK's own classes ---------------------------------------------------------------------------


async def create(client: anthropic.AsyncAnthropic, prompt: str, stream: bool) -> str:
    """The answer's text, through messages.stream or messages.create."""
    if stream:
        async with client.messages.stream(model=MODEL, max_tokens=100, messages=user(prompt)) as s:
            return await s.get_final_text()
    message = await client.messages.create(model=MODEL, max_tokens=100, messages=user(prompt))
    return "".join(block.text for block in message.content if isinstance(block, TextBlock))


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(
    ("fault", "exception", "status", "kind"),
    [
        ("429", anthropic.RateLimitError, 429, "rate_limit_error"),
        ("529", anthropic.OverloadedError, 529, "overloaded_error"),
        ("500", anthropic.InternalServerError, 502, "api_error"),
        ("401", anthropic.InternalServerError, 502, "api_error"),  # the gateway's upstream key, not the client's
    ],
)
async def test_upstream_faults_raise_the_sdks_classes(
    client: anthropic.AsyncAnthropic,
    stream: bool,
    fault: str,
    exception: type[anthropic.APIStatusError],
    status: int,
    kind: str,
) -> None:
    with pytest.raises(exception) as raised:
        await create(client, f"[emu:fault={fault}] [emu:retry_after=3]", stream)
    assert raised.value.status_code == status and raised.value.type == kind
    assert raised.value.response.headers["x-task-id"]
    if fault == "429":
        assert raised.value.response.headers["retry-after"] == "3"


async def test_a_failure_after_the_first_token_arrives_in_the_stream(
    client: anthropic.AsyncAnthropic, gateway: str
) -> None:
    prompt = "[emu:fault=error_midstream] [emu:after=4]"
    texts: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as raised:
        async with client.messages.stream(model=MODEL, max_tokens=100, messages=user(prompt)) as s:
            async for text in s.text_stream:
                texts.append(text)
    assert texts == emulated_deltas(prompt, 50)[:4]
    assert raised.value.status_code == 200 and raised.value.type == "overloaded_error"  # as Claude's own stream
    task_id = raised.value.response.headers["x-task-id"]
    whole, rest, _ = await reread_from_the_middle(gateway, task_id)
    assert rest[-1].event == "error" and rest[-1].json()["error"]["retryable"] is True


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"messages": []}, "messages: Expected `array` of length >= 1"),
        ({"max_tokens": 0}, "max_tokens: Expected `int` >= 1"),
        ({"extra_body": {"temperature": 3}}, "temperature"),
        ({"messages": [{"role": "user", "content": [{"type": "hologram"}]}]}, "hologram"),
    ],
)
async def test_a_bad_body_is_a_bad_request(
    client: anthropic.AsyncAnthropic, arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(anthropic.BadRequestError, match=message) as raised:
        await client.messages.create(**{"model": MODEL, "max_tokens": 10, "messages": user("hi"), **arguments})
    body = raised.value.body
    assert isinstance(body, dict) and set(body) == {"type", "error"} and set(body["error"]) == {"type", "message"}
    assert raised.value.type == body["error"]["type"] == "invalid_request_error"


async def test_unknown_paths_and_methods_in_anthropics_shape(client: anthropic.AsyncAnthropic, gateway: str) -> None:
    with pytest.raises(anthropic.NotFoundError) as raised:
        await client.get("/v1/messages/batches_not_here", cast_to=object)
    assert raised.value.type == "not_found_error"
    async with httpx.AsyncClient(base_url=gateway) as http:
        response = await http.get("/v1/messages")
    assert response.status_code == 405 and response.json()["error"]["type"] == "invalid_request_error"
    async with httpx.AsyncClient(base_url=gateway) as http:
        response = await http.get("/v1/nothing")  # not an Anthropic path, no anthropic-version: OpenAI's shape
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


async def test_client_keys_as_x_api_key(gateway_factory: GatewayFactory) -> None:
    async with gateway_factory(gateway_api_keys="acme=sk-gw-acme") as url:
        async with anthropic.AsyncAnthropic(base_url=url, api_key="sk-gw-acme", max_retries=0) as client:
            message = await client.messages.create(model=MODEL, max_tokens=10, messages=user("hi [emu:deltas=3]"))
            assert isinstance(block := message.content[0], TextBlock) and block.text == emulated_text(
                "hi [emu:deltas=3]", 3
            )
            raw = await client.messages.with_raw_response.create(model=MODEL, max_tokens=10, messages=user("again"))
            task_id = raw.headers["x-task-id"]
        whole, _, _ = await reread_from_the_middle(url, task_id, **{"x-api-key": "sk-gw-acme"})
        assert whole[-1].event == "message_stop"
        async with anthropic.AsyncAnthropic(base_url=url, api_key="sk-wrong", max_retries=0) as client:
            with pytest.raises(anthropic.AuthenticationError) as raised:
                await client.messages.create(model=MODEL, max_tokens=10, messages=user("hi"))
            assert raised.value.type == "authentication_error"
            with pytest.raises(anthropic.AuthenticationError):
                await client.messages.count_tokens(model=MODEL, messages=user("hi"))


async def test_tenant_rate_limits_are_rate_limit_errors(gateway_factory: GatewayFactory) -> None:
    async with gateway_factory(gateway_api_keys="acme=sk-gw-acme", tenant_rpm=1) as url:
        async with anthropic.AsyncAnthropic(base_url=url, api_key="sk-gw-acme", max_retries=0) as client:
            await client.messages.create(model=MODEL, max_tokens=10, messages=user("one [emu:deltas=2]"))
            with pytest.raises(anthropic.RateLimitError) as raised:
                await client.messages.create(model=MODEL, max_tokens=10, messages=user("two"))
    assert raised.value.type == "rate_limit_error" and int(raised.value.response.headers["retry-after"]) >= 1


async def test_a_store_outage_is_a_service_unavailable_error(gateway_factory: GatewayFactory) -> None:
    async with gateway_factory(redis_url="redis://127.0.0.1:1/0") as url:
        async with anthropic.AsyncAnthropic(base_url=url, api_key="k", max_retries=0) as client:
            for stream in (True, False):
                with pytest.raises(anthropic.ServiceUnavailableError) as raised:
                    await create(client, "hi", stream)
                assert raised.value.type == "overloaded_error" and raised.value.response.headers["retry-after"] == "1"


async def test_an_unhandled_exception_is_anthropics_500() -> None:
    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("a bug")

    transport = httpx.ASGITransport(app=AnthropicErrors(broken), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        response = await http.post("/v1/messages", json={})
    assert response.status_code == 500
    assert response.json() == {"type": "error", "error": {"type": "api_error", "message": "internal server error"}}
