"""One pipelined connection to one Redis, for the store's scripts (the commands every generation makes).

redis-py's asyncio client sends each command on a pooled connection of its own and reads its reply with a read
of its own: ~160 µs of CPU per EVALSHA here, at one command in flight or fifty. Redis answers a connection's
commands in order, so one connection can carry every command at once: each is written as it comes, its reply
matched to it by position, and one read brings many replies; hiredis (redis-py's own parser) does the parsing.
~15–35 µs per EVALSHA (bench/RESULTS.md). Everything else (pub/sub, the live reader, rare commands) stays on
redis-py.

Failure rules, as the pool's: a command whose connection is lost (or was dropped while idle) is tried again on
a new connection, a few times; a command tried twice is written once (the scripts are idempotent on retry).
A connection that answers nothing while a command waits past ``STALLED`` is given up when that command's caller
gives up (its timeout), so a half-open connection never lingers: the next command opens a new one.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, cast

import hiredis
from redis.asyncio.connection import SSLConnection, parse_url
from redis.commands.core import AsyncScript
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    ConnectionError as RedisConnectionError,
    ResponseError,
)

CONNECT_SECONDS = 2.0
RETRIES = 3
STALLED = 1.0  # seconds a waiting command may go without any reply on its connection before it counts as dead
MAX_PENDING = 10_000  # commands in flight on the connection; past it the store counts as out of reach

Arg = str | bytes | memoryview | int | float


def _out_of_reach(reply: ResponseError) -> Exception:
    """A server still loading its data answers as one out of reach, as redis-py says (BusyLoadingError)."""
    return BusyLoadingError(str(reply)) if str(reply).startswith("LOADING") else reply


class _Lost(Exception):
    """The connection went away before the command's reply came."""


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.pending: deque[asyncio.Future[Any]] = deque()
        self.lost = False
        self.last_reply = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)  # as redis-py's connections

    def data_received(self, data: bytes) -> None:
        self.last_reply = time.monotonic()
        self.reader.feed(data)
        try:
            while (reply := self.reader.gets()) is not False:
                waiter = self.pending.popleft()
                if waiter.done():
                    continue  # its caller gave up: the answer is dropped, the order kept
                if isinstance(reply, ResponseError):
                    waiter.set_exception(_out_of_reach(reply))
                else:
                    waiter.set_result(reply)
        except hiredis.ProtocolError:
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        while self.pending:
            waiter = self.pending.popleft()
            if not waiter.done():
                waiter.set_exception(_Lost())

    def abort(self) -> None:
        self.lost = True  # at once: the next command opens a new connection
        if self.transport is not None:
            self.transport.abort()  # connection_lost follows, failing what waits

    async def send(self, args: Sequence[Arg]) -> Any:
        if self.lost or self.transport is None:
            raise _Lost
        if len(self.pending) >= MAX_PENDING:
            raise RedisConnectionError("too many Redis commands in flight")
        waiter = asyncio.get_running_loop().create_future()
        self.pending.append(waiter)
        self.transport.write(hiredis.pack_command(tuple(args)))  # type: ignore[arg-type]  # its stub: a 1-tuple
        sent = time.monotonic()
        try:
            return await waiter
        except asyncio.CancelledError:
            if self.last_reply < sent and time.monotonic() - sent >= STALLED:
                self.abort()
            raise


class LeanRedis:
    """``call`` a command or run a ``script`` on one pipelined connection, opened on first use and again after it
    is lost. Errors are redis-py's: ConnectionError when out of reach, ResponseError for Redis' error replies."""

    def __init__(self, address: dict[str, Any]) -> None:
        self._address = address
        self._connection: _Connection | None = None
        self._connecting = asyncio.Lock()
        self._closed = False

    @classmethod
    def from_url(cls, url: str) -> LeanRedis | None:
        """For ``redis://`` and ``unix://`` URLs; None for TLS (``rediss://``), left to redis-py."""
        address = parse_url(url)
        if address.get("connection_class") is SSLConnection:
            return None
        return cls(dict(address))

    async def call(self, *args: Arg) -> Any:
        for attempt in range(RETRIES + 1):
            connection = await self._connected()
            try:
                return await connection.send(args)
            except _Lost:
                if attempt == RETRIES:
                    break
                await asyncio.sleep(0.05 * 2**attempt)
        raise RedisConnectionError("Redis connection lost")

    async def script(self, script: AsyncScript, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        try:
            return await self.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self.call("EVAL", script.script, len(keys), *keys, *args)  # and the server keeps it again

    async def close(self) -> None:
        self._closed = True  # what still waits fails, and is not sent again on a new connection
        if self._connection is not None:
            self._connection.abort()
            self._connection = None

    async def _connected(self) -> _Connection:
        if self._closed:
            raise RedisConnectionError("the store is closed")
        connection = self._connection
        if connection is not None and not connection.lost:
            return connection
        async with self._connecting:
            if self._connection is None or self._connection.lost:
                self._connection = await self._open()
            return self._connection

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        address = self._address
        try:
            async with asyncio.timeout(CONNECT_SECONDS):
                if "path" in address:
                    _, connection = await loop.create_unix_connection(_Connection, address["path"])
                else:
                    _, connection = await loop.create_connection(
                        _Connection, address.get("host", "localhost"), address.get("port", 6379)
                    )
                try:
                    if address.get("password"):
                        credentials = [address.get("username") or "default", address["password"]]
                        await connection.send(["AUTH", *credentials])
                    if address.get("db"):
                        await connection.send(["SELECT", address["db"]])
                except BaseException:
                    connection.abort()
                    raise
        except ResponseError as exc:  # a wrong password: redis-py's answer, the store out of reach
            raise AuthenticationError(str(exc)) from None
        except (OSError, TimeoutError, _Lost) as exc:
            raise RedisConnectionError(f"could not connect to Redis: {type(exc).__name__}") from None
        return connection
