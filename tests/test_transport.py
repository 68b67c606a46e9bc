"""The lean httpx2 transport under the SDK: streaming, keep-alive, faults — on asyncio's loop and uvloop's."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import anthropic
import httpx2
import pytest
import uvloop

from llm_gateway.emulator import create_emulator_app, emulated_text
from llm_gateway.providers.transport import LeanTransport
from tests.processes import free_port
from tests.servers import serve

MODEL = "claude-emulated-1"


def client(base_url: str, transport: LeanTransport, read: float = 5.0) -> anthropic.AsyncAnthropic:
    timeout = httpx2.Timeout(connect=2.0, read=read, write=5.0, pool=5.0)
    http_client = anthropic.DefaultAsyncHttpxClient(transport=transport, timeout=timeout)
    return anthropic.AsyncAnthropic(api_key="k", base_url=base_url, max_retries=0, http_client=http_client)


async def stream_text(sdk: anthropic.AsyncAnthropic, prompt: str) -> str:
    messages: list[anthropic.types.MessageParam] = [{"role": "user", "content": prompt}]
    async with sdk.messages.stream(model=MODEL, max_tokens=1000, messages=messages) as stream:
        return await stream.get_final_text()


async def raw_stream(sdk: anthropic.AsyncAnthropic, prompt: str) -> bytes:
    """As the gateway reads: the raw body, to its end."""
    messages: list[anthropic.types.MessageParam] = [{"role": "user", "content": prompt}]
    async with sdk.messages.with_streaming_response.create(
        model=MODEL, max_tokens=1000, messages=messages, stream=True
    ) as response:
        return b"".join([chunk async for chunk in response.iter_bytes()])


async def streams_and_keeps_alive() -> None:
    async with serve(create_emulator_app()) as url:
        transport = LeanTransport()
        async with client(url, transport) as sdk:
            for n in (5, 300, 1):
                prompt = f"hello [emu:deltas={n}]"
                assert await stream_text(sdk, prompt) == emulated_text(prompt, n)
            opened = transport.connections_opened
            for n in (5, 300, 1):
                body = await raw_stream(sdk, f"raw [emu:deltas={n}]")
                assert body.count(b"event: content_block_delta") == n and body.endswith(b'message_stop"}\n\n')
            message = await sdk.messages.create(
                model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "x [emu:deltas=3]"}]
            )
            assert message.stop_reason == "end_turn"
        assert transport.connections_opened <= opened + 1, "one keep-alive connection for all the raw reads"


async def faults_become_httpx2_errors() -> None:
    async with serve(create_emulator_app()) as url:
        async with client(url, LeanTransport(), read=0.3) as sdk:
            with pytest.raises(httpx2.RemoteProtocolError):
                await stream_text(sdk, "[emu:fault=drop] [emu:after=2]")
            with pytest.raises(httpx2.ReadTimeout):
                await stream_text(sdk, "[emu:fault=stall] [emu:after=2]")
            with pytest.raises(anthropic.RateLimitError):
                await stream_text(sdk, "[emu:fault=429]")
            assert await stream_text(sdk, "after faults [emu:deltas=3]") == emulated_text(
                "after faults [emu:deltas=3]", 3
            )
    async with client(f"http://127.0.0.1:{free_port()}", LeanTransport()) as sdk:
        with pytest.raises(anthropic.APIConnectionError):
            await stream_text(sdk, "nobody listens")


async def a_closed_keepalive_connection_is_retried_once() -> None:
    """A server that closes each connection after one answer, without saying so."""
    requests = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        await reader.readuntil(b"\r\n\r\n")
        requests += 1
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport = LeanTransport()
    async with server, httpx2.AsyncClient(transport=transport) as http:
        for _ in range(3):
            response = await http.get(f"http://127.0.0.1:{port}/")
            assert response.json() == {}
            await asyncio.sleep(0.05)  # let the close arrive, or not: both must work
    assert requests == 3


SCENARIOS = [streams_and_keeps_alive, faults_become_httpx2_errors, a_closed_keepalive_connection_is_retried_once]


@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_on_asyncio(scenario: Callable[[], Awaitable[None]]) -> None:
    await scenario()


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_on_uvloop(scenario: Callable[[], Awaitable[None]]) -> None:
    """uvicorn runs the gateway on uvloop, whose transports differ from asyncio's."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())  # type: ignore[arg-type]
