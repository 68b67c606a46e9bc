"""The Vercel AI SDK's useChat against the gateway: the real ``ai`` package from npm, in Node
(tests/node/ai_sdk_client.mjs), with its DefaultChatTransport and readUIMessageStream.

scripts/install runs ``npm ci`` in tests/node (``ai`` pinned in its package-lock.json). These tests skip only when
``node`` is not on PATH; a missing node_modules is a failure telling to run scripts/install. The script checks
every chunk the gateway sends against the package's own uiMessageChunkSchema.
"""

from __future__ import annotations

import json
import shutil
import uuid
from typing import Any

import httpx
import pytest

from llm_gateway.emulator import emulated_text, emulated_tool_id, emulated_tool_input
from tests.conftest import Emulator
from tests.servers import replica_process, run_node

SCRIPT = "ai_sdk_client.mjs"
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not on PATH: the real `ai` package runs in Node")


async def run_client(**args: Any) -> dict[str, Any]:
    run = await run_node(SCRIPT, json.dumps(args), needs="ai")
    assert run.returncode == 0 and run.result["ok"], (run.result.get("error"), run.result.get("invalid"), run.stderr)
    return run.result


def new_chat_id() -> str:
    return f"chat-{uuid.uuid4().hex[:12]}"


def texts(message: dict[str, Any]) -> str:
    return "".join(part["text"] for part in message["parts"] if part["type"] == "text")


async def kept(base_url: str, chat_id: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=base_url) as client:
        response = await client.get(f"/api/chat/{chat_id}/messages")
    assert response.status_code == 200
    messages: list[dict[str, Any]] = response.json()
    return messages


async def test_an_answer_streams_to_the_transport_and_stays_in_the_chat(gateway: str, emulator: Emulator) -> None:
    chat_id = new_chat_id()
    prompt = "Tell me about rivers [emu:deltas=15]"
    result = await run_client(scenario="turns", api=f"{gateway}/api/chat", chatId=chat_id, prompts=[prompt])

    (answer,) = result["answers"]
    assert answer["text"] == emulated_text(prompt, 15) and answer["errors"] == []
    (response,) = result["responses"]
    assert response["status"] == 200 and response["done"]
    headers = response["headers"]
    assert headers["x-vercel-ai-ui-message-stream"] == "v1" and headers["x-task-id"]
    assert headers["content-type"].startswith("text/event-stream") and headers["cache-control"] == "no-cache"
    assert headers["x-accel-buffering"] == "no"
    types = [chunk["type"] for chunk in response["chunks"]]
    assert types[:3] == ["start", "start-step", "text-start"]
    assert types[3:-3] == ["text-delta"] * 15
    assert types[-3:] == ["text-end", "finish-step", "finish"]
    assert response["chunks"][-1] == {"type": "finish", "finishReason": "stop"}
    assert response["body"]["id"] == chat_id and response["body"]["trigger"] == "submit-message"

    messages = await kept(gateway, chat_id)
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[0] == result["messages"][0]  # kept as the client sent it
    assert messages[1]["id"] == response["chunks"][0]["messageId"] == answer["message"]["id"]
    assert texts(messages[1]) == emulated_text(prompt, 15)


async def test_a_second_turn_sends_only_the_newest_message(gateway: str, emulator: Emulator) -> None:
    chat_id = new_chat_id()
    first, second = "Name a river [emu:deltas=6]", "And a lake? [emu:deltas=5]"
    result = await run_client(scenario="turns", api=f"{gateway}/api/chat", chatId=chat_id, prompts=[first, second])

    assert [a["text"] for a in result["answers"]] == [emulated_text(first, 6), emulated_text(second, 5)]
    later = result["responses"][1]["body"]
    assert set(later) == {"id", "message"} and later["message"]["parts"][0]["text"] == second
    # The upstream saw the whole chat, the kept part of it included.
    upstream = json.loads(emulator.stats.bodies[-1])
    assert [(m["role"], m["content"][0]["text"]) for m in upstream["messages"]] == [
        ("user", first),
        ("assistant", emulated_text(first, 6)),
        ("user", second),
    ]
    messages = await kept(gateway, chat_id)
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert [texts(m) for m in messages[1::2]] == [emulated_text(first, 6), emulated_text(second, 5)]


async def test_a_tool_call_arrives_as_a_tool_part(gateway: str, emulator: Emulator) -> None:
    chat_id = new_chat_id()
    prompt = "Look up the weather in Paris [emu:deltas=4] [emu:tool=search]"
    tools = [{"name": "search", "description": "Search", "parameters": {"type": "object"}}]
    result = await run_client(
        scenario="turns", api=f"{gateway}/api/chat", chatId=chat_id, prompts=[prompt], body={"tools": tools}
    )

    (answer,) = result["answers"]
    (call,) = [part for part in answer["message"]["parts"] if part["type"] == "tool-search"]
    assert call["toolCallId"] == emulated_tool_id(prompt)
    assert call["state"] == "input-available" and call["input"] == emulated_tool_input(prompt)
    assert answer["text"] == emulated_text(prompt, 4)
    chunks = result["responses"][0]["chunks"]
    assert chunks[-1] == {"type": "finish", "finishReason": "tool-calls"}
    assert [tool["name"] for tool in json.loads(emulator.stats.bodies[-1])["tools"]] == ["search"]
    assert (await kept(gateway, chat_id))[1]["parts"] == answer["message"]["parts"]


async def test_an_aborted_fetch_resumes_on_another_replica(replica_env: dict[str, str], emulator: Emulator) -> None:
    chat_id = new_chat_id()
    prompt = "Tell me a long story about bridges [emu:deltas=60] [emu:delay_ms=25]"
    async with replica_process(replica_env) as (a, _), replica_process(replica_env) as (b, _):
        result = await run_client(
            scenario="resume",
            api=f"{a}/api/chat",
            resumeApi=f"{b}/api/chat",
            chatId=chat_id,
            prompt=prompt,
            abortAfter=5,
        )
        messages = await kept(b, chat_id)

    whole = emulated_text(prompt, 60)
    assert result["aborted"] and len(result["partial"]) < len(whole) and whole.startswith(result["partial"])
    assert result["text"] == whole and result["errors"] == []
    post, get, after_end = result["responses"]
    assert post["method"] == "POST" and not post["done"]
    assert get["method"] == "GET" and get["url"] == f"{b}/api/chat/{chat_id}/stream" and get["done"]
    assert get["headers"]["x-vercel-ai-ui-message-stream"] == "v1"
    # A replay from the start (resumeStreamIsReplay), under the same message id.
    assert get["chunks"][0] == post["chunks"][0] and get["chunks"][0]["type"] == "start"
    assert after_end["status"] == 204 and result["afterEnd"] is None
    assert texts(messages[-1]) == whole
    assert emulator.stats.messages == 1


async def test_stop_ends_the_stream_and_keeps_the_partial_answer(gateway: str, emulator: Emulator) -> None:
    chat_id = new_chat_id()
    prompt = "Tell me a very long story [emu:deltas=400] [emu:delay_ms=20]"
    result = await run_client(scenario="stop", api=f"{gateway}/api/chat", chatId=chat_id, prompt=prompt, stopAfter=5)

    stopped = result["stopped"]
    assert stopped["status"] == 200 and stopped["body"]["status"] == "cancelled"
    assert stopped["body"]["chat_id"] == chat_id
    post = result["responses"][0]
    assert post["done"] and post["chunks"][-1]["type"] == "abort"
    whole = emulated_text(prompt, 400)
    assert 0 < len(result["text"]) < len(whole) and whole.startswith(result["text"])
    messages = await kept(gateway, chat_id)
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert texts(messages[1]) == result["text"]  # the partial answer, as the client saw it
    async with httpx.AsyncClient(base_url=gateway) as client:
        assert (await client.get(f"/api/chat/{chat_id}/stream")).status_code == 204
        assert (await client.delete(f"/api/chat/{chat_id}/stream")).status_code == 204
