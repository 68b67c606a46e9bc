"""AI SDK chats over HTTP (API.md §4 "Drop-in APIs"): what is kept, one generation per chat, tenants, errors."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import msgspec

from llm_gateway import keys
from llm_gateway.ai_chats import Chat
from llm_gateway.app import create_app
from llm_gateway.emulator import emulated_text, emulated_tool_id
from llm_gateway.store.memory import MemoryStore
from llm_gateway.ui_messages import UIMessage
from tests.conftest import Emulator, GatewayFactory, gateway_settings
from tests.servers import serve
from tests.sse_client import Frame, frames

A = {"Authorization": "Bearer key-a"}
B = {"Authorization": "Bearer key-b"}


def user(id_: str, text: str) -> dict[str, Any]:
    return {"id": id_, "role": "user", "parts": [{"type": "text", "text": text}]}


def chunks(got: list[Frame]) -> list[Any]:
    return [frame.data if frame.data == "[DONE]" else frame.json() for frame in got]


def text_of(message: dict[str, Any]) -> str:
    return "".join(part["text"] for part in message["parts"] if part["type"] == "text")


async def post(client: httpx.AsyncClient, body: dict[str, Any], **kwargs: Any) -> list[Any]:
    async with client.stream("POST", "/api/chat", json=body, **kwargs) as response:
        assert response.status_code == 200, await response.aread()
        return chunks([frame async for frame in frames(response)])


async def test_a_failure_is_a_data_error_then_an_error_and_nothing_is_kept_of_it(gateway: str) -> None:
    async with httpx.AsyncClient(base_url=gateway) as client:
        got = await post(client, {"id": "c1", "messages": [user("u1", "[emu:fault=429] [emu:retry_after=3]")]})
        kept = (await client.get("/api/chat/c1/messages")).json()
    assert [c["type"] if isinstance(c, dict) else c for c in got] == [
        "start",
        "start-step",
        "data-error",
        "error",
        "[DONE]",
    ]
    assert got[2]["data"] == {"type": "upstream_rate_limited", "retryable": True, "retry_after": 3}
    assert got[2]["transient"] is True and got[3]["errorText"]
    assert [m["id"] for m in kept] == ["u1"]


async def test_unknown_chats_and_bad_bodies(gateway: str) -> None:
    async with httpx.AsyncClient(base_url=gateway) as client:
        assert (await client.get("/api/chat/never/stream")).status_code == 204
        assert (await client.delete("/api/chat/never/stream")).status_code == 204
        messages = await client.get("/api/chat/never/messages")
        assert messages.status_code == 200 and messages.json() == []
        assert (await client.get("/api/chat/bad%20id/messages")).json() == []
        answered = {
            "id": "c2",
            "messages": [
                user("u1", "hi"),
                {"id": "a1", "role": "assistant", "parts": [{"type": "text", "text": "yo"}]},
            ],
        }
        nothing_to_answer = await client.post("/api/chat", json=answered)
        assert nothing_to_answer.status_code == 422 and nothing_to_answer.json()["type"] == "invalid_request"
        bad_role = await client.post(
            "/api/chat", json={"id": "c2", "messages": [{"id": "x", "role": "tool", "parts": []}]}
        )
        assert bad_role.status_code == 422
        # Seed 001's body still means seed 001's chat.
        seed = await client.post("/api/chat", json={"message": "hello [emu:deltas=3]", "conversation_id": "c2"})
        assert seed.status_code == 200 and seed.json()["response"] == emulated_text("hello [emu:deltas=3]", 3)
        assert (await client.get("/api/chat/c2/messages")).json() == []


async def test_a_new_turn_stops_the_running_one_and_follows_its_partial_answer(
    gateway: str, emulator: Emulator
) -> None:
    long = "a long answer [emu:deltas=400] [emu:delay_ms=20]"
    short = "never mind [emu:deltas=3]"
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as client:
        first: list[Frame] = []
        async with client.stream("POST", "/api/chat", json={"id": "c3", "messages": [user("u1", long)]}) as response:
            async for frame in frames(response):
                first.append(frame)
                if len(first) == 8:
                    second = await post(client, {"id": "c3", "message": user("u2", short)})
        kept = (await client.get("/api/chat/c3/messages")).json()
    streamed = "".join(c["delta"] for c in chunks(first) if isinstance(c, dict) and c["type"] == "text-delta")
    assert chunks(first)[-2]["type"] == "abort" and chunks(first)[-1] == "[DONE]"
    assert second[-2] == {"type": "finish", "finishReason": "stop"}
    assert [m["id"] for m in kept][::2] == ["u1", "u2"]
    assert text_of(kept[1]) == streamed and emulated_text(long, 400).startswith(streamed)
    assert text_of(kept[3]) == emulated_text(short, 3)
    upstream = json.loads(emulator.stats.bodies[-1])["messages"]
    assert [m["role"] for m in upstream] == ["user", "assistant", "user"]
    assert upstream[1]["content"] == [{"type": "text", "text": streamed}]


async def test_a_regenerate_replaces_the_answer(gateway: str, emulator: Emulator) -> None:
    prompt = "say something [emu:deltas=4]"
    async with httpx.AsyncClient(base_url=gateway) as client:
        await post(client, {"id": "c4", "messages": [user("u1", prompt)]})
        await post(client, {"id": "c4", "message": user("u1", prompt), "trigger": "regenerate-message"})
        kept = (await client.get("/api/chat/c4/messages")).json()
    assert [m["role"] for m in kept] == ["user", "assistant"]
    assert [m["role"] for m in json.loads(emulator.stats.bodies[-1])["messages"]] == ["user"]


async def test_tool_results_continue_the_assistant_message(gateway: str, emulator: Emulator) -> None:
    prompt = "weather in Oslo? [emu:deltas=2] [emu:tool=search]"
    tools = [{"name": "search", "parameters": {"type": "object"}}]
    async with httpx.AsyncClient(base_url=gateway) as client:
        first = await post(client, {"id": "c5", "messages": [user("u1", prompt)], "tools": tools})
        kept = (await client.get("/api/chat/c5/messages")).json()
        answer = kept[1]
        call = answer["parts"][-1]
        assert call["type"] == "tool-search" and call["toolCallId"] == emulated_tool_id(prompt)
        call.update(state="output-available", output="sunny [emu:deltas=3]")  # the client ran the tool
        second = await post(client, {"id": "c5", "message": answer, "tools": tools})
        kept = (await client.get("/api/chat/c5/messages")).json()
    assert first[0]["messageId"] == second[0]["messageId"] == answer["id"]
    upstream = json.loads(emulator.stats.bodies[-1])["messages"]
    assert [m["role"] for m in upstream] == ["user", "assistant", "user"]
    assert upstream[2]["content"] == [
        {"type": "tool_result", "tool_use_id": emulated_tool_id(prompt), "content": "sunny [emu:deltas=3]"}
    ]
    assert [m["id"] for m in kept] == ["u1", answer["id"]]
    assert kept[1]["parts"][: len(answer["parts"])] == answer["parts"]
    assert text_of(kept[1]) == emulated_text(prompt, 2) + emulated_text("sunny [emu:deltas=3]", 3)


async def test_the_replica_that_ran_the_answer_keeps_it_when_it_ends(emulator: Emulator) -> None:
    store = MemoryStore(stream_ttl=60)
    async with serve(create_app(gateway_settings(emulator.url), store=store)) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            await post(client, {"id": "c7", "messages": [user("u1", "quick [emu:deltas=1]")]})
            async with asyncio.timeout(5):  # no request reads the chat: the end hook keeps the answer
                while await store.get_value(keys.ai_chat_active("c7")) is not None:
                    await asyncio.sleep(0.01)
            chat = msgspec.json.decode(await store.get_value(keys.ai_chat("c7")) or b"", type=Chat)
    assert [m.role for m in chat.messages] == ["user", "assistant"]
    assert chat.messages[1].parts[1] == {
        "type": "text",
        "text": emulated_text("quick [emu:deltas=1]", 1),
        "state": "done",
    }


async def test_an_answer_its_replica_never_kept_is_kept_by_the_next_reader(emulator: Emulator) -> None:
    store = MemoryStore(stream_ttl=60)
    async with serve(create_app(gateway_settings(emulator.url), store=store)) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            prompt = "an orphaned answer [emu:deltas=5]"
            task_id = (await client.post("/api/claude/prompt", json={"prompt": prompt})).json()["task_id"]
            # As a replica leaves it that dies after the generation, before it kept the answer.
            chat = Chat([msgspec.convert(user("u1", prompt), UIMessage)])
            await store.set_value(keys.ai_chat("c6"), msgspec.json.encode(chat), ttl=60)
            await store.set_value(keys.ai_chat_active("c6"), task_id.encode(), ttl=60)
            kept = (await client.get("/api/chat/c6/messages")).json()
            assert await store.get_value(keys.ai_chat_active("c6")) is None
    assert [m["role"] for m in kept] == ["user", "assistant"]
    assert kept[1]["id"] == f"msg_{task_id}" and text_of(kept[1]) == emulated_text(prompt, 5)


async def test_a_chat_is_its_tenants(gateway_factory: GatewayFactory) -> None:
    chat_id = f"shared-{uuid.uuid4().hex[:6]}"
    async with gateway_factory(gateway_api_keys="ka=key-a,kb=key-b") as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            body = {"id": chat_id, "messages": [user("u1", "long [emu:deltas=400] [emu:delay_ms=20]")]}
            async with client.stream("POST", "/api/chat", json=body, headers=A) as response:
                got: list[Frame] = []
                async for frame in frames(response):
                    got.append(frame)
                    if len(got) == 4:
                        break
            assert (await client.get(f"/api/chat/{chat_id}/stream", headers=B)).status_code == 204
            assert (await client.delete(f"/api/chat/{chat_id}/stream", headers=B)).status_code == 204
            assert (await client.get(f"/api/chat/{chat_id}/messages", headers=B)).json() == []
            await post(client, {"id": chat_id, "messages": [user("b1", "mine [emu:deltas=2]")]}, headers=B)
            theirs = (await client.get(f"/api/chat/{chat_id}/messages", headers=B)).json()
            async with client.stream("GET", f"/api/chat/{chat_id}/stream", headers=A) as resumed:
                first = await anext(frames(resumed))
            stopped = await client.delete(f"/api/chat/{chat_id}/stream", headers=A)
            ours = (await client.get(f"/api/chat/{chat_id}/messages", headers=A)).json()
            unauthorized = await client.get(f"/api/chat/{chat_id}/messages")
    assert [m["id"] for m in theirs][:1] == ["b1"] and len(theirs) == 2
    assert resumed.status_code == 200 and resumed.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert first.json()["type"] == "start"  # a replay from the start
    assert stopped.status_code == 200 and stopped.json()["status"] == "cancelled"
    assert [m["id"] for m in ours][:1] == ["u1"] and len(ours) == 2
    assert unauthorized.status_code == 401


async def test_a_new_turn_may_start_at_one_generation_a_tenant(gateway_factory: GatewayFactory) -> None:
    async with gateway_factory(tenant_max_concurrent=1) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        for turn in range(3):  # the stopped turn's slot is free before the next one claims it, every time
            body = {"id": f"one-{turn}", "messages": [user("u1", "long [emu:deltas=400] [emu:delay_ms=20]")]}
            async with client.stream("POST", "/api/chat", json=body) as response:
                async for frame in frames(response):
                    if frame.json()["type"] == "text-delta":
                        break
            next_turn = await client.post("/api/chat", json={"id": f"one-{turn}", "message": user("u2", "hi")})
            assert next_turn.status_code == 200, next_turn.text
