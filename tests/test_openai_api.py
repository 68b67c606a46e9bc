"""OpenAI's API, drop-in: the official openai SDK against the gateway on uvicorn (Claude and the OpenAI-compatible
vendors both served by the emulator); each stream re-read through the ``openai`` dialect from its middle."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionFunctionToolParam

from llm_gateway.emulator import emulated_call_id, emulated_deltas, emulated_text, emulated_tool_id, emulated_tool_input
from tests.conftest import EMULATOR_KEY, Emulator, GatewayFactory
from tests.sse_client import Frame, read_all
from tests.test_openai_provider import vendor_settings

WEATHER: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
    },
}


@pytest.fixture
async def gateway(gateway_factory: GatewayFactory, emulator: Emulator) -> AsyncIterator[str]:
    async with gateway_factory(**vendor_settings(emulator)) as url:
        yield url


def sdk(gateway: str, api_key: str = "unused") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway + "/v1", api_key=api_key, max_retries=0)


@pytest.fixture
async def client(gateway: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with sdk(gateway) as opened:
        yield opened


async def streamed(client: openai.AsyncOpenAI, **request: Any) -> tuple[str, list[Any]]:
    """The task id and every chunk of a streamed completion."""
    raw = await client.chat.completions.with_raw_response.create(stream=True, **request)
    chunks = [chunk async for chunk in raw.parse()]
    return raw.headers["x-task-id"], chunks


def text_of(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


async def reread(gateway: str, task_id: str) -> tuple[list[Frame], list[Frame]]:
    """The task's log in the ``openai`` dialect: whole, then resumed after the middle frame that has an id."""
    url = f"/api/claude/subscribe/{task_id}?format=openai"
    async with httpx.AsyncClient(base_url=gateway) as client:
        whole = await read_all(client, url)
        with_ids = [i for i, frame in enumerate(whole) if frame.id]
        cut = with_ids[len(with_ids) // 2]
        rest = await read_all(client, url, headers={"Last-Event-ID": whole[cut].id or ""})
    assert [(f.id, f.data) for f in whole[: cut + 1] + rest] == [(f.id, f.data) for f in whole]
    return whole[: cut + 1], rest


def frame_text(frames: list[Frame]) -> str:
    chunks = [f.json() for f in frames if f.data != "[DONE]"]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))


@pytest.mark.parametrize("model", ["claude-sonnet-4-6", "openai/gpt-test", "cerebras/llama-test", "gemini/gem-test"])
async def test_a_stream_with_usage_and_its_reread(
    gateway: str, client: openai.AsyncOpenAI, emulator: Emulator, model: str
) -> None:
    prompt = f"Tell me about rivers, {model} [emu:deltas=14]"
    task_id, chunks = await streamed(
        client,
        model=model,
        messages=[{"role": "system", "content": "be kind"}, {"role": "user", "content": prompt}],
        stream_options={"include_usage": True},
        temperature=0.5,
    )
    assert text_of(chunks) == emulated_text(prompt, 14)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert {c.id for c in chunks} == {f"chatcmpl-{task_id}"} and {c.model for c in chunks} == {model}
    assert len({c.created for c in chunks}) == 1 and {c.object for c in chunks} == {"chat.completion.chunk"}
    *body, finish, last = chunks
    assert finish.choices[0].finish_reason == "stop" and all(c.choices[0].finish_reason is None for c in body)
    assert last.choices == [] and last.usage is not None and last.usage.completion_tokens == 14
    assert last.usage.total_tokens == last.usage.prompt_tokens + 14 and last.usage.prompt_tokens > 0
    if model.startswith("claude-"):
        assert emulator.stats.messages == 1 and emulator.stats.chat_completions == 0
    else:
        assert emulator.stats.chat_completions == 1 and emulator.stats.messages == 0
        sent = json.loads(emulator.stats.bodies[-1])
        assert sent["model"] == model.split("/", 1)[1] and sent["temperature"] == 0.5
        assert sent["messages"][0] == {"role": "system", "content": "be kind"}
    head, rest = await reread(gateway, task_id)
    assert frame_text(head) + frame_text(rest) == emulated_text(prompt, 14)
    assert frame_text(rest) and rest[-1].data == "[DONE]" and rest[-2].json()["usage"]["completion_tokens"] == 14


async def test_a_stream_without_usage(client: openai.AsyncOpenAI) -> None:
    prompt = "no usage please [emu:deltas=5]"
    _, chunks = await streamed(client, model="claude-haiku-4-5", messages=[{"role": "user", "content": prompt}])
    assert text_of(chunks) == emulated_text(prompt, 5)
    assert chunks[-1].choices[0].finish_reason == "stop" and all(c.usage is None for c in chunks)


@pytest.mark.parametrize("model", ["claude-sonnet-4-6", "openai/gpt-test"])
async def test_a_whole_completion(client: openai.AsyncOpenAI, model: str) -> None:
    prompt = "A whole answer [emu:deltas=9]"
    raw = await client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": prompt}]
    )
    completion = raw.parse()
    assert completion.id == f"chatcmpl-{raw.headers['x-task-id']}" and completion.object == "chat.completion"
    assert completion.model == model and completion.created > 1_700_000_000
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == emulated_text(prompt, 9)
    assert choice.finish_reason == "stop" and choice.message.tool_calls is None
    assert completion.usage is not None and completion.usage.completion_tokens == 9


@pytest.mark.parametrize("model", ["claude-sonnet-4-6", "openai/gpt-test"])
@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_a_token_limit_is_a_length_finish(
    client: openai.AsyncOpenAI, emulator: Emulator, model: str, field: str
) -> None:
    prompt = "cut short [emu:deltas=20]"
    request: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}], field: 4}
    completion = await client.chat.completions.create(**request)
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == "".join(emulated_deltas(prompt, 20)[:4])
    _, chunks = await streamed(client, **request)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    sent = json.loads(emulator.stats.bodies[-1])
    assert sent.get("max_tokens", sent.get("max_completion_tokens")) == 4


@pytest.mark.parametrize(
    ("model", "call_id"), [("claude-sonnet-4-6", emulated_tool_id), ("openai/gpt-x", emulated_call_id)]
)
async def test_tool_calls_and_a_second_turn(
    gateway: str, client: openai.AsyncOpenAI, emulator: Emulator, model: str, call_id: Any
) -> None:
    prompt = "Weather in Paris? [emu:tool=get_weather] [emu:deltas=3]"
    messages: list[Any] = [{"role": "user", "content": prompt}]
    task_id, chunks = await streamed(client, model=model, messages=messages, tools=[WEATHER], tool_choice="auto")
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for fragment in chunk.choices[0].delta.tool_calls or ():
            call = calls.setdefault(fragment.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += fragment.id or ""
            call["name"] += fragment.function.name or ""
            call["arguments"] += fragment.function.arguments or ""
    assert list(calls) == [0] and calls[0]["id"] == call_id(prompt) and calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == emulated_tool_input(prompt)
    assert chunks[-1].choices[0].finish_reason == "tool_calls" and text_of(chunks) == emulated_text(prompt, 3)
    head, rest = await reread(gateway, task_id)
    assert frame_text(head) + frame_text(rest) == emulated_text(prompt, 3)

    whole = await client.chat.completions.create(model=model, messages=messages, tools=[WEATHER])
    tool_calls = whole.choices[0].message.tool_calls or []
    assert whole.choices[0].finish_reason == "tool_calls" and len(tool_calls) == 1
    assert tool_calls[0].id == call_id(prompt) and tool_calls[0].type == "function"
    assert json.loads(tool_calls[0].function.arguments) == emulated_tool_input(prompt)

    messages += [
        whole.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": tool_calls[0].id, "content": "sunny [emu:deltas=4]"},
    ]
    answer = await client.chat.completions.create(model=model, messages=messages, tools=[WEATHER])
    assert answer.choices[0].message.content == emulated_text("sunny [emu:deltas=4]", 4)
    sent = json.loads(emulator.stats.bodies[-1])
    if model.startswith("claude-"):
        assert sent["messages"][-2]["content"][-1]["type"] == "tool_use"
        assert sent["messages"][-1]["content"] == [
            {"type": "tool_result", "tool_use_id": call_id(prompt), "content": "sunny [emu:deltas=4]"}
        ]
        assert sent["tools"][0]["input_schema"] == WEATHER["function"]["parameters"]
    else:
        assert sent["messages"][-1] == {
            "role": "tool",
            "tool_call_id": call_id(prompt),
            "content": "sunny [emu:deltas=4]",
        }


async def test_tool_choice_and_sampling_reach_claude(client: openai.AsyncOpenAI, emulator: Emulator) -> None:
    await client.chat.completions.create(
        model="claude-sonnet-4-6",
        messages=[{"role": "developer", "content": "terse"}, {"role": "user", "content": "hi"}],
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
        top_p=0.9,
        stop=["END", "STOP"],
    )
    sent = json.loads(emulator.stats.bodies[-1])
    assert sent["tool_choice"] == {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}
    assert sent["top_p"] == 0.9 and sent["stop_sequences"] == ["END", "STOP"] and sent["system"] == "terse"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["claude-sonnet-4-6", "openai/gpt-test"])
async def test_an_upstream_rate_limit_is_a_rate_limit_error(
    client: openai.AsyncOpenAI, model: str, stream: bool
) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "[emu:fault=429] [emu:retry_after=7]"}], stream=stream
        )
    error = caught.value
    assert error.status_code == 429 and error.code == "rate_limit_exceeded" and error.type == "requests"
    assert error.response.headers["retry-after"] == "7" and error.response.headers["x-task-id"]
    assert EMULATOR_KEY not in error.message


@pytest.mark.parametrize(("fault", "status"), [("500", 502), ("529", 503), ("401", 502)])
async def test_upstream_failures_are_server_errors(client: openai.AsyncOpenAI, fault: str, status: int) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(
            model="claude-sonnet-4-6", messages=[{"role": "user", "content": f"[emu:fault={fault}]"}], stream=True
        )
    assert caught.value.status_code == status and caught.value.type == "server_error"


async def test_an_error_after_the_first_tokens_is_an_error_chunk(gateway: str, client: openai.AsyncOpenAI) -> None:
    prompt = "[emu:fault=error_midstream] [emu:after=3] [emu:deltas=10]"
    raw = await client.chat.completions.with_raw_response.create(
        model="claude-sonnet-4-6", messages=[{"role": "user", "content": prompt}], stream=True
    )
    received: list[Any] = []
    with pytest.raises(openai.APIError) as caught:
        async for chunk in raw.parse():
            received.append(chunk)
    assert text_of(received) == "".join(emulated_deltas(prompt, 10)[:3])
    assert caught.value.code == "upstream_overloaded" and caught.value.type == "server_error"
    assert isinstance(caught.value.body, dict) and caught.value.body["retryable"] is True
    _, rest = await reread(gateway, raw.headers["x-task-id"])
    assert rest[-1].data == "[DONE]" and rest[-2].json()["error"]["code"] == "upstream_overloaded"


@pytest.mark.parametrize(
    ("request_", "param"),
    [
        ({"model": "claude-sonnet-4-6", "messages": []}, "messages"),
        ({"model": "claude-sonnet-4-6", "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"model": "claude-sonnet-4-6", "messages": [{"role": "user", "content": "hi"}], "n": 2}, "n"),
        (
            {"model": "claude-sonnet-4-6", "messages": [{"role": "user", "content": "hi"}], "temperature": 1.5},
            "temperature",
        ),
        (
            {
                "model": "claude-sonnet-4-6",
                "messages": [
                    {"role": "user", "content": "hi"},
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}
                        ],
                    },
                ],
            },
            "messages[1].tool_calls[0].function.arguments",
        ),
    ],
)
async def test_a_bad_body_is_a_bad_request_error(
    client: openai.AsyncOpenAI, request_: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(**request_)
    assert caught.value.status_code == 400 and caught.value.type == "invalid_request_error"
    assert caught.value.param == param and caught.value.code == "invalid_request"


async def test_unknown_paths_under_v1_are_not_found_errors(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await client.embeddings.create(model="x", input="hi")
    assert caught.value.type == "invalid_request_error" and caught.value.code == "not_found"


async def test_keys(gateway_factory: GatewayFactory) -> None:
    prompt = "keyed [emu:deltas=3]"
    request: dict[str, Any] = {"model": "claude-sonnet-4-6", "messages": [{"role": "user", "content": prompt}]}
    async with gateway_factory(gateway_api_keys="acme=sk-good") as url:
        async with sdk(url, "sk-wrong") as wrong, sdk(url, "sk-good") as right:
            with pytest.raises(openai.AuthenticationError) as caught:
                await wrong.chat.completions.create(**request)
            with pytest.raises(openai.AuthenticationError):
                await wrong.models.list()
            completion = await right.chat.completions.create(**request)
        async with httpx.AsyncClient(base_url=url) as plain:
            refused = await plain.get("/api/claude/task/x")
    assert caught.value.code == "invalid_api_key" and caught.value.type == "invalid_request_error"
    assert completion.choices[0].message.content == emulated_text(prompt, 3)
    assert refused.status_code == 401 and refused.json()["type"] == "unauthorized", "elsewhere: the contract's shape"


async def test_models_in_both_shapes(client: openai.AsyncOpenAI, gateway: str) -> None:
    listed = [model async for model in client.models.list()]
    ids = [model.id for model in listed]
    assert ids[0] == "claude-sonnet-4-6" and "claude-haiku-4-5" in ids
    assert {"openai/gpt-4o", "cerebras/llama-3.3-70b", "gemini/gemini-2.5-flash"} <= set(ids)
    assert {model.object for model in listed} == {"model"} and len(ids) == len(set(ids))
    assert next(m for m in listed if m.id == "gemini/gemini-2.5-flash").owned_by == "google"
    one = await client.models.retrieve("openai/gpt-4o")
    assert one.id == "openai/gpt-4o" and one.owned_by == "openai"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("nobody/knows")

    async with anthropic.AsyncAnthropic(base_url=gateway, api_key="unused", max_retries=0) as claude:
        page = await claude.models.list()
        haiku = await claude.models.retrieve("claude-haiku-4-5")
    assert [model.id for model in page.data] == ids and page.has_more is False
    assert page.data[0].type == "model" and page.data[0].display_name == "Claude Sonnet 4.6"
    assert page.first_id == ids[0] and page.last_id == ids[-1]
    assert haiku.display_name == "Claude Haiku 4.5"


async def test_vendor_models_are_listed_only_with_their_key(gateway_factory: GatewayFactory) -> None:
    async with gateway_factory() as url, sdk(url) as client:
        ids = [model.id async for model in client.models.list()]
    assert ids and all(model.startswith("claude-") for model in ids)
