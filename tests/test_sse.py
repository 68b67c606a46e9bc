"""The SSE response on its own: ASGI called with our own receive/send, as a disconnecting client would."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import anthropic._streaming
import openai._streaming
import pytest
from starlette.requests import Request
from starlette.types import Message

from llm_gateway.aio import Release
from llm_gateway.dialects import DIALECTS, NativeDialect
from llm_gateway.errors import InvalidRequest
from llm_gateway.events import Complete, Start, Text, TokenUsage
from llm_gateway.sse import EventStreamResponse, aclose, frames, resume_point
from llm_gateway.store.memory import MemoryStore

SCOPE: dict[str, Any] = {"type": "http", "method": "GET", "path": "/", "headers": []}


async def test_a_disconnect_ends_the_response_and_closes_the_body() -> None:
    closed = asyncio.Event()
    sent: list[Message] = []
    gone = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"data: x\n\n"
                await asyncio.sleep(0.01)
        finally:
            closed.set()

    async def receive() -> dict[str, Any]:
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)
        if len(sent) == 4:
            gone.set()

    async with asyncio.timeout(5):
        await EventStreamResponse(endless(), {"X-Task-Id": "t"}, Release())(SCOPE, receive, send)
    assert closed.is_set()
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    headers = dict(sent[0]["headers"])
    assert headers[b"content-type"].startswith(b"text/event-stream") and headers[b"x-task-id"] == b"t"
    assert b"content-length" not in headers


async def test_a_release_ends_the_stream_with_retry_after_the_last_whole_frame() -> None:
    closed, stay = asyncio.Event(), asyncio.Event()
    released = Release()
    sent: list[Message] = []

    async def endless() -> AsyncIterator[bytes]:
        try:
            for n in range(1000):
                yield b"id: %d\ndata: x\n\n" % n
        finally:
            closed.set()

    async def receive() -> dict[str, Any]:
        await stay.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if len(sent) == 3:
            released.set()
        await asyncio.sleep(0.01)  # a slow client: the release lands while a frame waits to be sent
        sent.append(message)

    async with asyncio.timeout(5):
        await EventStreamResponse(endless(), {}, released)(SCOPE, receive, send)
    assert closed.is_set()
    assert [m["body"] for m in sent[1:]] == [b"id: 0\ndata: x\n\n", b"id: 1\ndata: x\n\n", b"retry: 500\n\n"]
    assert sent[-1]["more_body"] is False


async def test_keepalive_comments_while_the_log_is_idle() -> None:
    store = MemoryStore()
    await store.create_task("t", fingerprint="", model="m", lease_seconds=5)
    await store.start_task("t", owner="r", lease_seconds=5, event=Start("t", "m"))
    stream = frames(store, "t", None, NativeDialect(), heartbeat=0.05)
    got = [await anext(stream) for _ in range(4)]
    await store.append("t", [Text(0, "a\nb")], owner="r")
    got.append(await anext(stream))
    await aclose(stream)
    assert got[0] == b": connected\n\n"
    assert got[1].startswith(b"event: start\nid: ")
    assert got[2:4] == [b": keep-alive\n"] * 2
    assert got[4].startswith(b"event: chunk\nid: ") and got[4].endswith(b'data: {"chunk":"a\\nb"}\n\n')


@pytest.mark.parametrize(
    ("headers", "query"), [([(b"last-event-id", b"yesterday")], b""), ([], b"last_event_id=yesterday")]
)
def test_a_malformed_resume_point_is_a_400_naming_the_field(headers: list[tuple[bytes, bytes]], query: bytes) -> None:
    request = Request({**SCOPE, "headers": headers, "query_string": query})
    with pytest.raises(InvalidRequest) as refused:
        resume_point(request)
    assert refused.value.status == 400 and refused.value.type == "invalid_request"
    assert refused.value.message == "malformed event id: expected <ms>-<seq> as sent in the stream's id: field"
    assert refused.value.detail == [{"loc": ["last_event_id"], "msg": "malformed event id", "input": "yesterday"}]


def test_a_resume_point_is_stripped() -> None:
    request = Request({**SCOPE, "headers": [(b"last-event-id", b" 17-2 ")], "query_string": b""})
    assert resume_point(request) == "17-2"


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
@pytest.mark.parametrize("decoder", [openai._streaming.SSEDecoder, anthropic._streaming.SSEDecoder])
async def test_keepalives_are_invisible_to_the_sdks_parsers(dialect: str, decoder: type[Any]) -> None:
    """Both SDKs' parsers dispatch an event at every blank line once the stream has sent an id (openai's then
    fails to decode its empty data as JSON): a keep-alive must change nothing they see."""
    store = MemoryStore()
    await store.create_task("t", fingerprint="", model="m", lease_seconds=5)
    await store.start_task("t", owner="r", lease_seconds=5, event=Start("t", "m"))
    stream = frames(store, "t", None, DIALECTS[dialect]("t", ""), heartbeat=0.05)
    chunks = [await anext(stream) for _ in range(4)]
    await store.append("t", [Text(0, "hello")], owner="r")
    chunks.append(await anext(stream))
    chunks.append(await anext(stream))  # one more keep-alive
    await store.finish("t", Complete("hello", "end_turn", TokenUsage(1, 1), "m"))
    chunks.extend([chunk async for chunk in stream])
    keepalives = [chunk for chunk in chunks if chunk.startswith(b": keep-alive")]
    assert len(keepalives) >= 3

    def parsed(parts: list[bytes]) -> list[tuple[str | None, str]]:
        return [(sse.event, sse.data) for sse in decoder().iter_bytes(iter(parts))]

    seen = parsed(chunks)
    assert seen == parsed([chunk for chunk in chunks if chunk not in keepalives])
    assert all(data for _, data in seen), seen
