"""Secrets stay out of answers and logs; settings are all named at once; conversations and WS messages are bounded."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
import websockets

from llm_gateway.app import RedactKeysFilter
from llm_gateway.config import ConfigError, from_env
from llm_gateway.content import Message, assistant, user
from llm_gateway.conversations import newest
from llm_gateway.providers.base import error_from_upstream
from llm_gateway.redact import mask_query, mask_url, scrub
from tests.conftest import EMULATOR_KEY, Emulator, GatewayFactory
from tests.test_trellis import create_body


def test_scrub_hides_keys_an_upstream_echoes() -> None:
    for key in ("sk-ant-api03-AbC_dEf-0123456789", "sk-proj-abcdefghijkl", "AIzaSyA-0123456789abcdef", "0" * 40):
        text = scrub(f"Incorrect API key provided: {key}. See the docs.")
        assert key not in text and "[redacted]" in text and text.endswith("See the docs.")
    assert scrub("no credentials here: model claude-sonnet-4-6") == "no credentials here: model claude-sonnet-4-6"


def test_claude_errors_are_scrubbed_before_they_reach_a_task() -> None:
    error = error_from_upstream(401, "authentication_error", "invalid x-api-key: sk-ant-api03-Secret_0123456789")
    assert error.type == "upstream_auth" and "sk-ant" not in error.message and "[redacted]" in error.message


def test_url_credentials_and_secret_query_values_are_masked() -> None:
    assert mask_url("https://user:p4ss@proxy.example.com:8443/v1?x=1") == "https://***@proxy.example.com:8443/v1?x=1"
    assert mask_url("https://api.anthropic.com") == "https://api.anthropic.com"
    assert "s3cr3t" not in mask_query("after=1-0&api%5Fkey=s3cr3t") and "after=1-0" in mask_query(
        "after=1-0&api%5Fkey=s3cr3t"
    )
    assert mask_query("after=1-0") == "after=1-0"


@pytest.mark.parametrize("query", ["api_key=s3cr3t", "api%5Fkey=s3cr3t", "API_KEY=s3cr3t", "x=1&api%5fkey=s3cr3t"])
def test_client_keys_stay_out_of_logs_however_encoded(query: str) -> None:
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        "",
        0,
        '%s - "%s %s HTTP/%s" %d',
        ("1.2.3.4:5", "GET", f"/x?{query}", "1.1", 200),
        None,
    )
    assert RedactKeysFilter().filter(record)
    assert "s3cr3t" not in record.getMessage()


async def test_auth_status_masks_credentials_in_the_base_url(
    gateway_factory: GatewayFactory, emulator: Emulator
) -> None:
    base = emulator.url.replace("http://", "http://admin:hunter22@")
    async with gateway_factory(anthropic_base_url=base) as url, httpx.AsyncClient(base_url=url) as client:
        body = (await client.get("/auth-status")).json()
    assert "hunter22" not in json.dumps(body) and body["base_url"].startswith("http://***@127.0.0.1")


def test_every_bad_setting_is_named_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        from_env({"WORKERS": "0", "API_PORT": "http", "LOG_LEVEL": "loud", "REDIS_URL": "http://x"}, env_file=None)
    message = str(caught.value)
    for name in ("WORKERS", "API_PORT", "LOG_LEVEL", "REDIS_URL"):
        assert name in message


def test_a_conversation_keeps_its_newest_messages_starting_with_a_user_turn() -> None:
    turns: list[Message] = []
    for i in range(5):
        turns += [user(f"q{i}"), assistant(f"a{i}")]
    assert newest(turns, 4) == turns[-4:]
    assert newest(turns, 3) == turns[-2:]  # never starts with an assistant turn
    assert newest(turns[:2], 100) == turns[:2]


async def test_conversation_history_is_bounded(gateway_factory: GatewayFactory, emulator: Emulator) -> None:
    async with gateway_factory(conversation_max_messages=4) as url, httpx.AsyncClient(base_url=url, timeout=30) as c:
        first = (await c.post("/api/chat", json={"message": "turn 0"})).json()
        for i in range(1, 4):
            answer = await c.post(
                "/api/chat", json={"message": f"turn {i}", "conversation_id": first["conversation_id"]}
            )
            assert answer.status_code == 200
    sent = json.loads(emulator.stats.bodies[-1])["messages"]
    assert len(sent) == 5 and sent[0]["role"] == "user" and sent[-1]["content"] == "turn 3"
    assert "turn 0" not in json.dumps(sent)


async def test_websocket_messages_over_max_body_bytes_are_refused_and_the_socket_stays(
    gateway_factory: GatewayFactory,
) -> None:
    async with gateway_factory(max_body_bytes=2048) as url:
        async with websockets.connect(url.replace("http", "ws") + "/ws/generate") as ws:
            await ws.send(json.dumps({"prompt": "x" * 5000}))
            refused = json.loads(await ws.recv())
            await ws.send(json.dumps({"prompt": "Hello"}))
            answered = json.loads(await ws.recv())
    assert refused["event"] == "error" and refused["type"] == "payload_too_large"
    assert answered["event"] == "complete" and answered["success"] is True


async def test_ids_never_reach_a_path_or_header_unchecked(gateway_factory: GatewayFactory, emulator: Emulator) -> None:
    settings = {
        "trellis_api_key": EMULATOR_KEY,
        "trellis_base_url": emulator.url,
        "trellis_webhook_secret": "hook-secret",
    }
    async with gateway_factory(**settings) as url, httpx.AsyncClient(base_url=url) as client:
        created = await client.post("/api/trellis/task", json=create_body())
        piapi_id = created.json()["data"]["task_id"]
        climb = await client.get("/api/trellis/task/..")
        dotted = await client.get("/api/trellis/task/a.b")
        hooks = [
            await client.post(
                "/api/trellis/webhook",
                json={"data": {"task_id": bad, "status": "completed"}},
                headers={"x-webhook-secret": "hook-secret"},
            )
            for bad in ("abc\r\nX-Injected: 1", "tâche-ünï", "../x", "")
        ]
        # A Claude task id shaped like a Trellis log's name reads no Trellis log.
        claude = await client.get(f"/api/claude/task/trellis:{piapi_id}")
        newline = await client.post("/api/claude/queue", json={"prompt": "x", "task_id": "abc\n"})
    assert climb.status_code == 404 and dotted.status_code == 404
    assert set(emulator.stats.piapi_gets_by_task) <= {piapi_id}, "no malformed id reached PiAPI"
    for hook in hooks:
        assert hook.status_code == 422 and hook.json()["type"] == "invalid_request"
    assert claude.status_code == 404
    assert newline.status_code == 422
