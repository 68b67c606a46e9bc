"""OpenAI-compatible chat completions (OpenAI, Cerebras, Gemini) over httpx: Anthropic-format requests in, events out.

The request is converted by pure functions (``openai_request``), the stream is mapped by a pure ``ChunkMapper``
(``openai_stream``); only ``OpenAICompatibleProvider`` touches the network. Choices a reader may not expect:

- Only the request is retried, never a started stream: the client has already seen its first events.
- After ``[DONE]`` the body is still read to its end so the connection can be reused; a failure then is moot.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable

import httpx
import msgspec

from ..errors import GatewayError
from ..events import Event
from .anthropic_wire import SSEDecoder
from .base import GenerationRequest, read_capped, retry_delay, send_with_retries
from .openai_request import openai_body, openai_messages, openai_tool_choice, openai_tools
from .openai_stream import ChunkMapper, error_in_body, upstream_error

__all__ = [
    "ChunkMapper",
    "OpenAICompatibleProvider",
    "error_in_body",
    "openai_body",
    "openai_messages",
    "openai_tool_choice",
    "openai_tools",
    "retry_delay",
    "upstream_error",
]

_RETRY_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError)

_encode = msgspec.json.Encoder().encode


class OpenAICompatibleProvider:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        idle_timeout: float,
        max_retries: int,
        client: httpx.AsyncClient | None = None,
        max_tokens_field: str = "max_tokens",
    ) -> None:
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._headers = {"authorization": f"Bearer {api_key}", "accept": "text/event-stream"}
        self._max_retries = max_retries
        self._max_tokens_field = max_tokens_field
        self._owns_client = client is None
        # The read timeout is the idle timeout: it bounds the silence between two chunks of the stream.
        timeout = httpx.Timeout(connect=10.0, read=idle_timeout, write=30.0, pool=30.0)
        # No connection cap of our own: MAX_CONCURRENT_TASKS bounds the streams.
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=100)
        self._client = client or httpx.AsyncClient(timeout=timeout, limits=limits)

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Event]:
        body = _encode(openai_body(request, max_tokens_field=self._max_tokens_field))
        mapper = ChunkMapper(request.model)
        try:
            response = await self._send(body)
            try:
                if response.headers.get("content-type", "").startswith("application/json"):
                    # Not a stream: an error (possibly Gemini's array) sent with a 200.
                    raw = await read_capped(response.aiter_bytes())
                    raise upstream_error(error_in_body(raw) or "not an event stream", 200)
                decoder = SSEDecoder()
                try:
                    async for chunk in response.aiter_bytes():
                        for event in mapper.feed(decoder.feed(chunk)):
                            yield event
                    for event in mapper.feed(decoder.finish()):
                        yield event
                except httpx.TransportError:
                    if not mapper.done:
                        raise
            finally:
                await response.aclose()
        except httpx.TimeoutException:
            raise GatewayError("upstream_timeout", "upstream sent nothing within UPSTREAM_IDLE_TIMEOUT") from None
        except httpx.HTTPError as exc:
            raise GatewayError("upstream_error", f"upstream connection failed: {type(exc).__name__}") from None
        yield mapper.complete()

    async def _send(self, body: bytes) -> httpx.Response:
        def send() -> Awaitable[httpx.Response]:
            request = self._client.build_request("POST", self._url, content=body, headers=self._headers)
            request.headers["content-type"] = "application/json"
            return self._client.send(request, stream=True)

        return await send_with_retries(send, retries=self._max_retries, retry_on=_RETRY_ERRORS, refused=_refused)


def _refused(response: httpx.Response, raw: bytes) -> GatewayError:
    error = error_in_body(raw) or raw[:200].decode("utf-8", "replace") or response.reason_phrase
    return upstream_error(error, response.status_code, response.headers.get("retry-after"))
