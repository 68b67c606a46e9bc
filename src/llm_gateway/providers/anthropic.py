"""Claude: the Messages stream, sent over the lean transport and mapped to our events; token counts via the SDK."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Iterator
from typing import Any, cast

import anthropic
import httpx2
import msgspec

from ..errors import GatewayError
from ..events import Complete, Event, Text, TokenUsage, ToolCall, Usage
from .anthropic_wire import SSEDecoder, WireEvent, decode_wire_event
from .base import GenerationRequest, error_from_upstream, send_with_retries
from .transport import LeanTransport

API_VERSION = "2023-06-01"
_encode = msgspec.json.Encoder().encode
_RETRY_ERRORS = (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.RemoteProtocolError, httpx2.ReadTimeout)


class AnthropicProvider:
    """Streams go straight to ``POST /v1/messages`` over the lean transport; the SDK serves the rest.

    Why not the SDK for streams: building and sending a request through it was a third of the gateway's CPU
    per streamed answer (py-spy, bench/streams.py). Its retry rule is kept (``worth_retrying``,
    ``retry_delay``); only a request is retried, never a started stream.
    """

    def __init__(self, client: anthropic.AsyncAnthropic, transport: LeanTransport, idle_timeout: float) -> None:
        self._client = client
        self._transport = transport
        self._url = client.base_url.join("v1/messages")
        self._max_retries = client.max_retries
        self._timeouts = {"connect": 10.0, "read": idle_timeout, "write": 30.0, "pool": 30.0}
        credential = (
            {"x-api-key": client.api_key} if client.api_key else {"authorization": f"Bearer {client.auth_token}"}
        )
        self._headers = {
            **credential,
            "anthropic-version": API_VERSION,
            "content-type": "application/json",
            "accept": "text/event-stream",
            "user-agent": "llm-gateway",
        }

    @classmethod
    def create(
        cls,
        *,
        api_key: str | None,
        auth_token: str | None,
        base_url: str | None,
        idle_timeout: float,
        max_retries: int,
    ) -> AnthropicProvider:
        # The read timeout is the idle timeout: it bounds the silence between two chunks of the stream.
        timeout = httpx2.Timeout(connect=10.0, read=idle_timeout, write=30.0, pool=30.0)
        transport = LeanTransport()
        client = anthropic.AsyncAnthropic(
            api_key=api_key,
            auth_token=auth_token,
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
            http_client=anthropic.DefaultAsyncHttpxClient(transport=transport, timeout=timeout),
        )
        return cls(client, transport, idle_timeout)

    async def close(self) -> None:
        await self._client.close()

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Event]:
        body = _encode(messages_body(request))
        mapper = StreamMapper(request.model)
        try:
            response = await self._send(body)
            try:
                decoder = SSEDecoder()
                # The transport's own body, past httpx2's decoders: the request asked for no content encoding.
                async for chunk in cast(AsyncIterable[bytes], response.stream):
                    for event in mapper.feed_payloads(decoder.feed(chunk)):
                        yield event
                for event in mapper.feed_payloads(decoder.finish()):
                    yield event
                # The body was read to its end (just past message_stop): the connection goes back to the pool.
            finally:
                await response.aclose()
        except msgspec.DecodeError:
            raise GatewayError("upstream_error", "upstream sent a malformed stream event") from None
        except httpx2.TimeoutException:
            raise GatewayError("upstream_timeout", "upstream sent nothing within UPSTREAM_IDLE_TIMEOUT") from None
        except httpx2.HTTPError as exc:
            raise GatewayError("upstream_error", f"upstream connection failed: {type(exc).__name__}") from None
        if mapper.complete is None:
            raise GatewayError("upstream_error", "upstream stream ended before message_stop")
        yield mapper.complete

    async def _send(self, body: bytes) -> httpx2.Response:
        def send() -> Awaitable[httpx2.Response]:
            timeouts = {"timeout": self._timeouts}
            request = httpx2.Request("POST", self._url, headers=self._headers, content=body, extensions=timeouts)
            return self._transport.handle_async_request(request)

        return await send_with_retries(send, retries=self._max_retries, retry_on=_RETRY_ERRORS, refused=_status_error)

    async def count_tokens(self, request: GenerationRequest) -> int:
        """The upstream's count of the request's input tokens (``POST /v1/messages/count_tokens``)."""
        omit = anthropic.omit
        with upstream_errors():
            counted = await self._client.messages.count_tokens(
                model=request.model,
                messages=cast(Any, msgspec.to_builtins(request.messages)),
                system=cast(Any, msgspec.to_builtins(request.system) if request.system else omit),
                tools=cast(Any, request.tools or omit),
                tool_choice=cast(Any, request.tool_choice or omit),
                thinking=cast(Any, request.thinking or omit),
            )
        return counted.input_tokens


def messages_body(request: GenerationRequest) -> dict[str, Any]:
    """The streamed Messages API body for ``request``: what the client left out is left out."""
    body: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens,
        "messages": request.messages,
        "stream": True,
    }
    optional = {
        "system": request.system,
        "tools": request.tools,
        "tool_choice": request.tool_choice,
        "stop_sequences": request.stop_sequences,
        "metadata": request.metadata,
        "thinking": request.thinking,
    }
    body.update((name, value) for name, value in optional.items() if value)
    sampling = {"temperature": request.temperature, "top_p": request.top_p, "top_k": request.top_k}
    body.update((name, value) for name, value in sampling.items() if value is not None)
    return body


def _status_error(response: httpx2.Response, raw: bytes) -> GatewayError:
    """An error answer (``{"type": "error", "error": {type, message}}``, or anything else) as our GatewayError."""
    try:
        error = decode_wire_event(raw).error
    except msgspec.DecodeError:
        error = None
    message = error.message if error else raw[:200].decode("utf-8", "replace") or response.reason_phrase
    return error_from_upstream(
        response.status_code, error.type if error else None, message, response.headers.get("retry-after")
    )


@contextlib.contextmanager
def upstream_errors() -> Iterator[None]:
    """The SDK's failures as our GatewayErrors (``error_from_upstream``)."""
    try:
        yield
    except msgspec.DecodeError:
        raise GatewayError("upstream_error", "upstream sent a malformed stream event") from None
    except anthropic.APIStatusError as exc:
        raise error_from_upstream(
            exc.status_code, exc.type, exc.api_message or str(exc), exc.response.headers.get("retry-after")
        ) from None
    except (anthropic.APITimeoutError, httpx2.TimeoutException):
        raise GatewayError("upstream_timeout", "upstream sent nothing within UPSTREAM_IDLE_TIMEOUT") from None
    except (anthropic.APIConnectionError, httpx2.HTTPError) as exc:
        raise GatewayError("upstream_error", f"upstream connection failed: {type(exc).__name__}") from None
    except anthropic.AnthropicError as exc:
        raise GatewayError("upstream_error", f"upstream client error: {type(exc).__name__}") from None


class StreamMapper:
    """Turns the Messages stream's events into ours; pure, so it is tested without a network."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.parts: list[str] = []
        self.tools: dict[int, tuple[str, str]] = {}
        self.input_tokens = 0
        self.output_tokens = 0
        self.stop_reason: str | None = None
        self.stop_sequence: str | None = None
        self.complete: Complete | None = None

    def feed_payloads(self, payloads: list[bytes]) -> Iterator[Event]:
        """Events for a run of SSE ``data`` payloads; the final ``complete`` is kept in ``self.complete``.

        A generator, so the events before an ``error`` payload of the same chunk still reach the log.
        """
        for payload in payloads:
            raw = decode_wire_event(payload)
            if raw.type == "error" and raw.error is not None:
                raise error_from_upstream(200, raw.error.type, raw.error.message)
            yield from self.feed(raw)

    def feed(self, raw: WireEvent) -> list[Event]:
        kind, delta = raw.type, raw.delta
        if kind == "content_block_delta" and delta is not None:
            if delta.type == "text_delta":
                self.parts.append(delta.text)
                return [Text(raw.index, delta.text)]
            if delta.type == "input_json_delta" and delta.partial_json:
                tool_id, name = self.tools.get(raw.index, ("", ""))
                return [ToolCall(raw.index, tool_id, name, delta.partial_json)]
            return []
        if kind == "content_block_start" and raw.content_block is not None:
            block = raw.content_block
            if block.type == "tool_use":
                self.tools[raw.index] = (block.id, block.name)
                return [ToolCall(raw.index, block.id, block.name, "")]
            if block.type == "text" and block.text:
                self.parts.append(block.text)
                return [Text(raw.index, block.text)]
            return []
        if kind == "message_start" and raw.message is not None:
            self.model = raw.message.model or self.model
            usage = raw.message.usage
            self.input_tokens = (
                (usage.input_tokens or 0)
                + (usage.cache_creation_input_tokens or 0)
                + (usage.cache_read_input_tokens or 0)
            )
            self.output_tokens = usage.output_tokens or 0
            return []
        if kind == "message_delta":
            if delta is not None:
                self.stop_reason = delta.stop_reason or self.stop_reason
                self.stop_sequence = delta.stop_sequence or self.stop_sequence
            if raw.usage is not None and raw.usage.output_tokens is not None:
                self.output_tokens = raw.usage.output_tokens  # cumulative, never summed
            return [Usage(self.input_tokens, self.output_tokens)]
        if kind == "message_stop":
            totals = TokenUsage(self.input_tokens, self.output_tokens)
            self.complete = Complete("".join(self.parts), self.stop_reason, totals, self.model, self.stop_sequence)
        return []
