"""POST /chat driven by the real @tanstack/ai-client from npm, in Node (tests/node/chat_client.mjs).

scripts/install runs ``npm ci`` in tests/node (pinned in its package-lock.json). These tests skip only when
``node`` is not on PATH; a missing node_modules is a failure telling to run scripts/install.

Node runs as an asyncio subprocess: the gateway under test serves from this process's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest

from llm_gateway.emulator import emulated_deltas, emulated_text, emulated_tool_id, emulated_tool_input
from tests.conftest import Emulator
from tests.servers import NodeRun, run_node

SCRIPT = "chat_client.mjs"
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not on PATH: the real @tanstack/ai-client runs in Node")


async def run_client(base_url: str, scenario: str, prompt: str, *extra: str) -> NodeRun:
    return await run_node(SCRIPT, base_url, scenario, prompt, *extra, needs="@tanstack/ai-client")


def succeeded(run: NodeRun) -> dict[str, Any]:
    assert run.returncode == 0 and run.result["ok"], (run.result, run.stderr)
    assert run.result["status"] == "ready"
    assert run.result["errors"] == [] and run.result["error"] is None
    return run.result


def assistant_parts(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [part for message in result["messages"] if message["role"] == "assistant" for part in message["parts"]]


async def test_text_answer(gateway: str, emulator: Emulator) -> None:
    prompt = "Tell me about rivers [emu:deltas=15]"
    result = succeeded(await run_client(gateway, "text", prompt))

    assert result["texts"] == [emulated_text(prompt, 15)]
    assert result["deltas"] == emulated_deltas(prompt, 15)
    assert [m["role"] for m in result["messages"]] == ["user", "assistant"]
    assert result["finishReasons"] == ["stop"]
    (request,) = result["requests"]
    assert request["method"] == "POST" and request["lastEventId"] is None
    assert request["xRunId"] == request["runId"]  # the client's run id is the gateway's task id
    assert result["reconnects"] == 0
    assert emulator.stats.messages == 1


async def test_tool_call(gateway: str, emulator: Emulator) -> None:
    prompt = "Look up the weather in Paris [emu:deltas=4] [emu:tool=search]"
    result = succeeded(await run_client(gateway, "tool", prompt, "it is sunny [emu:deltas=5]"))

    (call,) = [part for part in assistant_parts(result) if part["type"] == "tool-call"]
    assert call["id"] == emulated_tool_id(prompt)
    assert call["name"] == "search"
    assert json.loads(call["arguments"]) == emulated_tool_input(prompt)
    assert call["input"] == emulated_tool_input(prompt)
    assert result["texts"][0] == emulated_text(prompt, 4)
    assert result["finishReasons"][0] == "tool_calls"
    # The client tool ("search") was advertised to the gateway, which passed it upstream.
    first_upstream = json.loads(emulator.stats.bodies[0])
    assert [tool["name"] for tool in first_upstream["tools"]] == ["search"]


async def test_client_tool_round_trip(gateway: str, emulator: Emulator) -> None:
    prompt = "Look up the weather in Oslo [emu:deltas=4] [emu:tool=search]"
    tool_output = "it is sunny [emu:deltas=5]"
    result = succeeded(await run_client(gateway, "tool", prompt, tool_output))

    assert result["toolExecutions"] == [{"toolCallId": emulated_tool_id(prompt), "input": emulated_tool_input(prompt)}]
    # The client sent the tool result back in a second run on its own; the emulator answers a tool result's text.
    assert len(result["runIds"]) == 2
    assert result["texts"] == [emulated_text(prompt, 4), emulated_text(tool_output, 5)]
    assert emulator.stats.messages == 2


@dataclass
class CuttingProxy:
    """A TCP proxy in front of the gateway that cuts its first connection for real once ``cut_at`` finds the
    place in the response bytes: both sockets are aborted (RST) after forwarding exactly that many bytes."""

    target: str
    cut_at: Callable[[bytes], int | None]
    url: str = ""
    connections: int = 0
    delivered: bytes = b""  # what the first connection delivered before the cut
    cut: bool = False

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        first = self.connections == 1
        parts = urlsplit(self.target)
        up_reader, up_writer = await asyncio.open_connection(parts.hostname, parts.port)

        async def upstream() -> None:
            with contextlib.suppress(ConnectionError):
                while data := await reader.read(65536):
                    up_writer.write(data)
                    await up_writer.drain()

        async def downstream() -> None:
            with contextlib.suppress(ConnectionError):
                while data := await up_reader.read(65536):
                    if first and not self.cut:
                        seen = self.delivered + data
                        limit = self.cut_at(seen)
                        if limit is not None:
                            writer.write(seen[len(self.delivered) : limit])
                            await writer.drain()
                            self.delivered = seen[:limit]
                            self.cut = True
                            writer.transport.abort()
                            up_writer.transport.abort()
                            return
                        self.delivered = seen
                    writer.write(data)
                    await writer.drain()

        pumps = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for w in (writer, up_writer):
                w.close()
                with contextlib.suppress(ConnectionError):
                    await w.wait_closed()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[CuttingProxy]:
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        async with server:
            yield self


def nth(haystack: bytes, needle: bytes, n: int) -> int | None:
    """Index of the n-th (1-based) occurrence of ``needle``."""
    found = [m.start() for m in re.finditer(re.escape(needle), haystack)]
    return found[n - 1] if len(found) >= n else None


def mid_line(data: bytes) -> int | None:
    """Inside the 5th TEXT_MESSAGE_CONTENT's data line: the client holds an unterminated line."""
    at = nth(data, b'"TEXT_MESSAGE_CONTENT"', 5)
    return None if at is None or len(data) < at + 12 else at + 12


def frame_boundary(data: bytes) -> int | None:
    """Right after the 5th TEXT_MESSAGE_CONTENT frame's blank line."""
    at = nth(data, b'"TEXT_MESSAGE_CONTENT"', 5)
    end = -1 if at is None else data.find(b"\n\n", at)
    return None if end < 0 else end + 2


def after_idless_frame(data: bytes) -> int | None:
    """Right after TEXT_MESSAGE_START, which carries no id: (only the last frame of one of our events does)."""
    at = data.find(b'"TEXT_MESSAGE_START"')
    end = -1 if at < 0 else data.find(b"\n\n", at)
    return None if end < 0 else end + 2


def last_complete_id(delivered: bytes) -> str:
    """The id of the last event whose ``id:`` and whole ``data:`` line reached the client."""
    ids = re.findall(rb"^id: ([^\n]*)\ndata: [^\n]*\n", delivered, flags=re.MULTILINE)
    assert ids, delivered
    return str(ids[-1].decode())


@pytest.mark.parametrize("cut_at", [mid_line, frame_boundary, after_idless_frame])
async def test_connection_cut_mid_stream_resumes(
    gateway: str, emulator: Emulator, cut_at: Callable[[bytes], int | None]
) -> None:
    prompt = f"Tell me a long story about bridges ({getattr(cut_at, '__name__', '')}) [emu:deltas=30] [emu:delay_ms=20]"
    async with CuttingProxy(gateway, cut_at).running() as proxy:
        result = succeeded(await run_client(proxy.url, "cut", prompt))

    assert proxy.cut and proxy.connections >= 2
    # The client re-POSTed the same run by itself, from the last event it had whole: nothing repeated or missing.
    first, resumed, *more = result["requests"]
    assert not more, result["requests"]
    assert first["method"] == resumed["method"] == "POST"
    assert first["lastEventId"] is None
    assert resumed["runId"] == first["runId"] and resumed["xRunId"] == first["xRunId"]
    assert resumed["lastEventId"] == last_complete_id(proxy.delivered)
    assert result["reconnects"] == 1
    assert result["deltas"] == emulated_deltas(prompt, 30)
    assert result["texts"] == [emulated_text(prompt, 30)]
    assert [m["role"] for m in result["messages"]] == ["user", "assistant"]
    assert result["chunkTypes"]["RUN_STARTED"] == 1 and result["chunkTypes"]["RUN_FINISHED"] == 1
    # It attached to the same generation: the upstream model was called once.
    assert emulator.stats.messages == 1


async def test_join_run_from_a_second_client(gateway: str, emulator: Emulator) -> None:
    prompt = "Describe a quiet garden [emu:deltas=25] [emu:delay_ms=20]"
    result = succeeded(await run_client(gateway, "join", prompt))

    joined = result["joined"]
    assert joined["ok"] and joined["status"] == "ready", joined
    (request,) = joined["requests"]
    assert request["method"] == "GET"
    query = dict(pair.split("=", 1) for pair in urlsplit(request["url"]).query.split("&"))
    assert query == {"offset": "-1", "runId": result["runIds"][0]}
    # Joined mid-run, from the start: the whole answer, once.
    assert result["texts"] == joined["texts"] == [emulated_text(prompt, 25)]
    assert joined["deltas"] == emulated_deltas(prompt, 25)
    assert emulator.stats.messages == 1
