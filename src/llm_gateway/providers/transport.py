"""A lean HTTP/1.1 transport for httpx2, the HTTP client inside the anthropic SDK.

Why: with the default transport (httpcore2, h11, anyio) the HTTP plumbing was ~40% of the gateway's CPU
per streamed answer (py-spy, bench/streams.py). This one is an asyncio Protocol with httptools' C parser
and a keep-alive pool. Streams are sent on it directly (providers/anthropic.py); the SDK's other calls go
through httpx2 on top of it.

Deliberately left out: HTTP/2, proxies and Unix sockets (``ANTHROPIC_BASE_URL`` must be http or https).
Errors are httpx2's own (ConnectError, ConnectTimeout, ReadTimeout, RemoteProtocolError), so the SDK's
retry policy and our error mapping treat them as before.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import AsyncIterator
from typing import cast

import httptools
import httpx2

HIGH_WATER = 1 << 20  # buffered body bytes before we stop reading the socket
MAX_IDLE_PER_HOST = 100


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: feeds bytes to httptools, wakes the reader."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.failed: str | None = None
        self.received_any = False
        self._waiter: asyncio.Future[None] | None = None
        self.reset()

    def reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.keep_alive = False
        self.message_done = False
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.received_any = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.failed = f"malformed HTTP response: {exc}"
            self.close()
        if self.buffered > HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake()

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()  # httptools forgets it once the message completes
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)

    def on_message_complete(self) -> None:
        self.message_done = True

    # for the transport
    def take(self) -> bytes:
        data = self.chunks.popleft() if len(self.chunks) == 1 else b"".join(self.chunks)
        self.chunks.clear()
        if self.buffered > HIGH_WATER and self.transport is not None:
            self.transport.resume_reading()
        self.buffered = 0
        return data

    async def wait(self, timeout: float | None) -> None:
        """Until more bytes or the end arrive; TimeoutError after ``timeout`` seconds.

        A timer on the waiter itself, not ``asyncio.timeout``: this runs once per chunk of every stream."""
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = None if timeout is None else loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    @property
    def reusable(self) -> bool:
        return self.message_done and self.keep_alive and not self.closed and self.failed is None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class LeanTransport(httpx2.AsyncBaseTransport):
    def __init__(self, *, ssl_context: ssl.SSLContext | None = None) -> None:
        # Loading the CA store blocks for a few ms: do it here, at start-up, not on the event loop's hot path.
        self._ssl_context = ssl_context or ssl.create_default_context()
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self.connections_opened = 0

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        timeouts = request.extensions.get("timeout", {})
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx2.UnsupportedProtocol(f"unsupported scheme {url.scheme!r}", request=request)
        key = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        body = await request.aread()
        head = [b"%s %s HTTP/1.1\r\n" % (request.method.encode(), url.raw_path)]
        head.extend(b"%s: %s\r\n" % (name, value) for name, value in request.headers.raw)
        if body and "content-length" not in request.headers:
            head.append(b"content-length: %d\r\n" % len(body))
        message = b"".join(head) + b"\r\n" + body

        connection = self._checkout(key)
        reused = connection is not None
        if connection is None:
            connection = await self._connect(key, timeouts.get("connect"), request)
        connection.reset()
        assert connection.transport is not None
        connection.transport.write(message)
        try:
            await self._read_headers(connection, timeouts.get("read"), request)
        except httpx2.RemoteProtocolError:
            if not reused or connection.received_any:
                raise
            # The server closed an idle keep-alive connection as we reused it: once more, on a new one.
            connection = await self._connect(key, timeouts.get("connect"), request)
            assert connection.transport is not None
            connection.transport.write(message)
            await self._read_headers(connection, timeouts.get("read"), request)
        stream = _ResponseBody(self, key, connection, timeouts.get("read"), request)
        return httpx2.Response(
            connection.status, headers=connection.headers, stream=stream, extensions={"http_version": b"HTTP/1.1"}
        )

    async def _read_headers(self, connection: _Connection, timeout: float | None, request: httpx2.Request) -> None:
        while not connection.headers_done:
            if connection.closed or connection.failed:
                connection.close()
                raise httpx2.RemoteProtocolError(connection.failed or "server closed the connection", request=request)
            try:
                await connection.wait(timeout)
            except TimeoutError:
                connection.close()
                raise httpx2.ReadTimeout("no response headers in time", request=request) from None

    def _checkout(self, key: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            if not connection.closed:
                return connection
        return None

    def checkin(self, key: tuple[str, str, int], connection: _Connection) -> None:
        idle = self._idle.setdefault(key, [])
        if connection.reusable and len(idle) < MAX_IDLE_PER_HOST:
            idle.append(connection)
        else:
            connection.close()

    async def _connect(self, key: tuple[str, str, int], timeout: float | None, request: httpx2.Request) -> _Connection:
        scheme, host, port = key
        context = self._ssl_context if scheme == "https" else None
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, connection = await loop.create_connection(
                    _Connection, host, port, ssl=context, server_hostname=host if context else None
                )
        except TimeoutError:
            raise httpx2.ConnectTimeout(f"could not connect to {host}:{port} in time", request=request) from None
        except OSError as exc:
            raise httpx2.ConnectError(f"could not connect to {host}:{port}: {exc}", request=request) from None
        self.connections_opened += 1
        return connection

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()


class _ResponseBody(httpx2.AsyncByteStream):
    def __init__(
        self,
        transport: LeanTransport,
        key: tuple[str, str, int],
        connection: _Connection,
        timeout: float | None,
        request: httpx2.Request,
    ) -> None:
        self._transport = transport
        self._key = key
        self._connection: _Connection | None = connection
        self._timeout = timeout
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        connection = self._connection
        while connection is not None:
            if connection.chunks:
                yield connection.take()
            elif connection.message_done:
                self._connection = None
                self._transport.checkin(self._key, connection)
                return
            elif connection.closed or connection.failed:
                reason = connection.failed or "peer closed connection without sending complete message body"
                await self.aclose()
                raise httpx2.RemoteProtocolError(reason, request=self._request)
            else:
                try:
                    await connection.wait(self._timeout)
                except TimeoutError:
                    await self.aclose()
                    raise httpx2.ReadTimeout("the response body stalled", request=self._request) from None

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if connection.message_done and not connection.chunks:
            self._transport.checkin(self._key, connection)  # read to the end, if not by our caller
        else:
            connection.close()  # abandoned mid-body: the connection cannot be reused
