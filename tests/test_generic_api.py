"""Seed 001's generic API and seed 004's /llm/query, driven the way each seed README's clients drive them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest
import websockets

from llm_gateway.emulator import emulated_deltas, emulated_text
from tests.conftest import Emulator, GatewayFactory
from tests.sse_client import frames


@pytest.fixture
async def quick_timeout_gateway(gateway_factory: GatewayFactory) -> AsyncIterator[str]:
    async with gateway_factory(upstream_idle_timeout=0.3) as url:
        yield url


async def test_generate_as_the_seed_readme_calls_it(gateway: str) -> None:
    # "Python with httpx": POST /api/generate, print(data["response"])
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{gateway}/api/generate",
            json={"prompt": "What is machine learning? [emu:deltas=8]", "max_tokens": 500, "temperature": 0.7},
        )
    data = response.json()
    assert response.status_code == 200
    assert data["success"] is True and data["response"] == emulated_text("What is machine learning? [emu:deltas=8]", 8)
    assert data["prompt"] == "What is machine learning? [emu:deltas=8]" and data["model"] == "claude-sonnet-4-6"
    assert data["tokens_used"] > 8 and data["timestamp"].endswith("Z") and data["task_id"]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"prompt": ""}, ["body", "prompt"]),
        ({"prompt": "x" * 10_001}, ["body", "prompt"]),
        ({"prompt": "x", "max_tokens": 0}, ["body", "max_tokens"]),
        ({"prompt": "x", "max_tokens": 8001}, ["body", "max_tokens"]),
        ({"prompt": "x", "temperature": -0.1}, ["body", "temperature"]),
        ({"prompt": "x", "temperature": 1.01}, ["body", "temperature"]),
        ({"max_tokens": 5}, ["body", "prompt"]),
    ],
)
async def test_generate_limits_of_the_seed(gateway: str, body: dict[str, object], loc: list[str]) -> None:
    async with httpx.AsyncClient(base_url=gateway) as client:
        for path in ("/api/generate", "/api/stream"):
            response = await client.post(path, json=body)
            assert response.status_code == 422, response.text
            assert response.json()["type"] == "invalid_request" and loc in [d["loc"] for d in response.json()["detail"]]


async def test_chat_keeps_the_conversation(gateway: str, emulator: Emulator) -> None:
    async with httpx.AsyncClient(base_url=gateway) as client:
        first = (await client.post("/api/chat", json={"message": "What is FastAPI? [emu:deltas=4]"})).json()
        conversation_id = first["conversation_id"]
        second = await client.post(
            "/api/chat", json={"message": "And Starlette? [emu:deltas=4]", "conversation_id": conversation_id}
        )
    assert second.status_code == 200 and second.json()["conversation_id"] == conversation_id
    assert second.json()["response"] == emulated_text("And Starlette? [emu:deltas=4]", 4)
    sent = json.loads(emulator.stats.bodies[-1])["messages"]
    assert sent == [
        {"role": "user", "content": "What is FastAPI? [emu:deltas=4]"},
        {"role": "assistant", "content": first["response"]},
        {"role": "user", "content": "And Starlette? [emu:deltas=4]"},
    ]


async def test_two_turns_of_one_conversation_at_once_do_not_interleave(gateway: str, emulator: Emulator) -> None:
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as client:
        conversation_id = (await client.post("/api/chat", json={"message": "start [emu:deltas=2]"})).json()[
            "conversation_id"
        ]
        turns = [f"turn {i} [emu:deltas=20] [emu:delay_ms=5]" for i in range(3)]
        answers = await asyncio.gather(
            *(client.post("/api/chat", json={"message": m, "conversation_id": conversation_id}) for m in turns)
        )
    assert all(a.status_code == 200 for a in answers)
    histories = [json.loads(body)["messages"] for body in list(emulator.stats.bodies)[-3:]]
    # Served one after the other: each turn saw every earlier turn, question and answer, in order.
    assert [len(h) for h in histories] == [3, 5, 7]
    for earlier, later in zip(histories, histories[1:], strict=False):
        assert later[: len(earlier)] == earlier
        assert later[len(earlier)]["role"] == "assistant"


async def test_stream_as_the_seed_readme_reads_it(gateway: str) -> None:
    # "Streaming Example": iter_lines, strip "data: ", stop at [DONE]
    prompt = "Tell me a story about robots [emu:deltas=30]"
    printed = []
    async with (
        httpx.AsyncClient() as client,
        client.stream("POST", f"{gateway}/api/stream", json={"prompt": prompt}) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        async for frame in frames(response):
            if frame.data != "[DONE]":
                printed.append(frame.data)
    assert printed == [d for d in emulated_deltas(prompt, 30)]


async def test_llm_query_streams_text_and_clear_error_frames(quick_timeout_gateway: str) -> None:
    # Seed 004's curl: {"prompt": "Tell me a joke about APIs"} --no-buffer; then a bad key, a rate limit, a timeout.
    async with httpx.AsyncClient(base_url=quick_timeout_gateway) as client:
        joke = {"prompt": "Tell me a joke about APIs [emu:deltas=5]"}
        async with client.stream("POST", "/llm/query", json=joke) as r:
            ok = [f async for f in frames(r)]
        failures = {}
        for fault in ("401", "429", "stall"):
            body = {"prompt": f"x [emu:fault={fault}] [emu:after=1]"}
            async with client.stream("POST", "/llm/query", json=body) as r:
                failures[fault] = [f async for f in frames(r)]
    assert "".join(f.data for f in ok[:-1]) == emulated_text("Tell me a joke about APIs [emu:deltas=5]", 5)
    assert ok[-1].data == "[DONE]"
    for fault, expected in (("401", "upstream_auth"), ("429", "upstream_rate_limited"), ("stall", "upstream_timeout")):
        error, done = failures[fault][-2:]
        assert error.event == "error" and json.loads(error.data)["type"] == expected, failures[fault]
        assert json.loads(error.data)["message"] and done.data == "[DONE]"


async def test_websocket_python_client_of_the_seed(gateway: str) -> None:
    uri = gateway.replace("http://", "ws://") + "/ws/generate"
    async with asyncio.timeout(10), websockets.connect(uri) as websocket:
        await websocket.send(json.dumps({"prompt": "Explain WebSockets [emu:deltas=6]", "max_tokens": 200}))
        data = json.loads(await websocket.recv())
        assert data["event"] == "complete" and data["success"] is True
        assert data["response"] == emulated_text("Explain WebSockets [emu:deltas=6]", 6)
        assert data["model"] == "claude-sonnet-4-6" and data["tokens_used"] > 0 and data["task_id"]

        # Streaming, a bad message, then another request: the socket stays usable.
        await websocket.send(json.dumps({"prompt": "stream it [emu:deltas=5]", "stream": True}))
        chunks = [json.loads(await websocket.recv()) for _ in range(5)]
        done = json.loads(await websocket.recv())
        assert [c["chunk"] for c in chunks] == emulated_deltas("stream it [emu:deltas=5]", 5)
        assert {c["event"] for c in chunks} == {"chunk"} and done["event"] == "complete"
        for bad in ("not json", json.dumps({"prompt": ""}), json.dumps({"prompt": "x", "max_tokens": 9000})):
            await websocket.send(bad)
            error = json.loads(await websocket.recv())
            assert error == {**error, "event": "error", "success": False, "type": "invalid_request"}
        await websocket.send(json.dumps({"prompt": "fail [emu:fault=529]"}))
        upstream = json.loads(await websocket.recv())
        assert upstream["type"] == "upstream_overloaded" and upstream["success"] is False
        await websocket.send(json.dumps({"prompt": "still here [emu:deltas=2]"}))
        assert json.loads(await websocket.recv())["response"] == emulated_text("still here [emu:deltas=2]", 2)


async def test_a_binary_websocket_frame_is_read_as_text(gateway: str) -> None:
    uri = gateway.replace("http://", "ws://") + "/ws/generate"
    async with asyncio.timeout(10), websockets.connect(uri) as websocket:
        await websocket.send(json.dumps({"prompt": "bytes [emu:deltas=2]"}).encode())
        assert json.loads(await websocket.recv())["response"] == emulated_text("bytes [emu:deltas=2]", 2)
        await websocket.send(b"\xff\xfe")
        assert json.loads(await websocket.recv())["type"] == "invalid_request", "an error message; the socket stays"
        await websocket.send(json.dumps({"prompt": "still [emu:deltas=1]"}))
        assert json.loads(await websocket.recv())["event"] == "complete"


async def test_a_conversation_named_like_another_s_lock_is_a_conversation_of_its_own(
    gateway: str, emulator: Emulator
) -> None:
    # Conversation "v:lock" once shared its key with conversation v's lock: its turn read v's lock token as
    # history (500), and its history, kept for a day, locked v out.
    async with httpx.AsyncClient(base_url=gateway, timeout=10) as client:

        async def turn(conversation_id: str, message: str) -> httpx.Response:
            return await client.post("/api/chat", json={"message": message, "conversation_id": conversation_id})

        first_of_lock = await turn("v:lock", "first of v:lock [emu:deltas=2]")
        first_of_v = await turn("v", "first of v [emu:deltas=2]")
        slow_v = asyncio.create_task(turn("v", "slow turn of v [emu:deltas=20] [emu:delay_ms=25]"))
        await asyncio.sleep(0.2)  # v's turn holds its lock now
        second_of_lock = await turn("v:lock", "second of v:lock [emu:deltas=2]")
        second_of_v = await slow_v
    for answer in (first_of_lock, first_of_v, second_of_lock, second_of_v):
        assert answer.status_code == 200, answer.text
    sent = {
        messages[-1]["content"]: messages for messages in (json.loads(b)["messages"] for b in emulator.stats.bodies)
    }
    assert [m["content"] for m in sent["second of v:lock [emu:deltas=2]"]] == [
        "first of v:lock [emu:deltas=2]",
        first_of_lock.json()["response"],
        "second of v:lock [emu:deltas=2]",
    ]
    assert [m["content"] for m in sent["slow turn of v [emu:deltas=20] [emu:delay_ms=25]"]] == [
        "first of v [emu:deltas=2]",
        first_of_v.json()["response"],
        "slow turn of v [emu:deltas=20] [emu:delay_ms=25]",
    ]
