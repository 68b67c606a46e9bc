"""The Claude provider against the emulator over real sockets: what it sends, how it retries, what it raises."""

from __future__ import annotations

import json

import pytest

from llm_gateway.content import user
from llm_gateway.emulator import create_emulator_app, emulated_text
from llm_gateway.errors import GatewayError
from llm_gateway.events import Complete, Event, Text
from llm_gateway.providers.anthropic import AnthropicProvider, messages_body
from llm_gateway.providers.base import GenerationRequest, worth_retrying
from tests.processes import free_port
from tests.servers import serve

MODEL = "claude-emulated-1"


def provider(
    url: str, *, max_retries: int = 0, api_key: str | None = "k", auth_token: str | None = None
) -> AnthropicProvider:
    return AnthropicProvider.create(
        api_key=api_key, auth_token=auth_token, base_url=url, idle_timeout=5.0, max_retries=max_retries
    )


async def collect(claude: AnthropicProvider, prompt: str) -> list[Event]:
    return [event async for event in claude.stream(GenerationRequest(model=MODEL, messages=[user(prompt)]))]


def text_of(events: list[Event]) -> str:
    return "".join(event.text for event in events if isinstance(event, Text))


async def test_streams_with_either_credential_and_sends_only_what_was_given() -> None:
    app = create_emulator_app(api_key="secret")
    async with serve(app) as url:
        for claude in (provider(url, api_key="secret"), provider(url, api_key=None, auth_token="secret")):
            prompt = "hello [emu:deltas=7]"
            events = await collect(claude, prompt)
            await claude.close()
            assert text_of(events) == emulated_text(prompt, 7)
            assert isinstance(events[-1], Complete) and events[-1].text == emulated_text(prompt, 7)
        sent = json.loads(app.state.stats.bodies[-1])
        assert sent == {
            "model": MODEL,
            "max_tokens": 4096,
            "messages": [{"role": "user", "content": prompt}],
            "stream": True,
        }


def test_the_body_carries_sampling_only_when_given() -> None:
    request = GenerationRequest(model=MODEL, messages=[user("x")], temperature=0.0, top_k=3, stop_sequences=["END"])
    body = messages_body(request)
    assert body["temperature"] == 0.0 and body["top_k"] == 3 and body["stop_sequences"] == ["END"]
    assert "top_p" not in body and "system" not in body and "tools" not in body


async def test_a_rate_limit_is_retried_as_the_upstream_asks_then_given_up() -> None:
    app = create_emulator_app()
    async with serve(app) as url:
        claude = provider(url, max_retries=2)
        prompt = "retry me [emu:fault=429] [emu:retry_after=0] [emu:faults=2] [emu:deltas=4]"
        assert text_of(await collect(claude, prompt)) == emulated_text(prompt, 4)
        assert app.state.stats.messages == 3, "two refusals, then the answer"

        app.state.stats.reset()
        with pytest.raises(GatewayError) as refused:
            await collect(claude, "always [emu:fault=429] [emu:retry_after=0]")
        assert refused.value.type == "upstream_rate_limited" and refused.value.retry_after == 0
        assert app.state.stats.messages == 3, "the first try and two retries"

        app.state.stats.reset()
        with pytest.raises(GatewayError) as denied:
            await collect(claude, "[emu:fault=401]")
        assert denied.value.type == "upstream_auth" and "authentication_error" in denied.value.message
        assert app.state.stats.messages == 1, "a 401 is never retried"
        await claude.close()


async def test_nobody_listening_is_an_upstream_error() -> None:
    claude = provider(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(GatewayError) as failed:
        await collect(claude, "hello")
    assert failed.value.type == "upstream_error" and "ConnectError" in failed.value.message
    await claude.close()


def test_the_upstream_may_say_whether_to_retry() -> None:
    assert worth_retrying(529, {}) and worth_retrying(408, {}) and worth_retrying(429, {})
    assert not worth_retrying(400, {}) and not worth_retrying(401, {})
    assert not worth_retrying(529, {"x-should-retry": "false"})
    assert worth_retrying(400, {"x-should-retry": "true"})
