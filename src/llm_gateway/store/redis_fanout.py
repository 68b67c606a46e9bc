"""Live reads of the Redis store: one multiplexed reader per replica, fanned out to its subscribers in memory.

``follow`` never blocks a connection of its own. It registers with ``Fanout``, whose single ``XREAD BLOCK``
covers every followed stream. A new stream joins that read by an XADD to the wake stream, which is part of
the same XREAD: unlike ``CLIENT UNBLOCK`` this cannot be lost in a race with the read. Streams of tasks
running on this replica stay out of the XREAD: their writer hands each stored batch to local subscribers
directly, and when the writer is done the stream joins the XREAD if anyone still follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError, TimeoutError as RedisTimeoutError

from ..aio import cancel_and_wait
from ..errors import StoreUnavailable
from ..events import Complete, Error, decode_event
from .base import EventBatch, parse_event_id

log = logging.getLogger(__name__)

PAGE = 1000
BLOCK_MS = 5000
COMMAND_TIMEOUT = 10.0
SUBSCRIBER_BACKLOG = 4096  # events buffered for one slow subscriber before it falls back to XRANGE
READER_BACKOFF_MAX = 1.0  # live reads resume within a second of the store coming back

# What says the store is out of reach (redis-py's BusyLoadingError, a restarting server, is a ConnectionError).
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, TimeoutError, OSError)

T = TypeVar("T")


async def command(reply: Awaitable[T], *, timeout: float = COMMAND_TIMEOUT) -> T:
    """Await one store command, bounded by ``timeout``; StoreUnavailable if the store is out of reach."""
    try:
        async with asyncio.timeout(timeout):
            return await reply
    except UNREACHABLE as exc:
        raise StoreUnavailable(type(exc).__name__) from exc


WAKE_TTL = 300  # seconds the wake stream outlives its last wake-up, so a replica that died leaves nothing behind


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def decode_entries(entries: list[Any]) -> EventBatch:
    return [(text(entry_id), decode_event(fields[b"e"])) for entry_id, fields in entries]


class Subscription:
    __slots__ = ("backlog", "failure", "overflowed", "ready")

    def __init__(self) -> None:
        self.backlog: EventBatch = []
        self.overflowed = False
        self.failure: Error | None = None  # the terminal event the owner could not store (``Fanout.fail``)
        self.ready = asyncio.Event()

    def deliver(self, batch: EventBatch) -> None:
        if self.overflowed:
            return
        if len(self.backlog) + len(batch) > SUBSCRIBER_BACKLOG:
            self.backlog.clear()
            self.overflowed = True
        else:
            self.backlog.extend(batch)
        self.ready.set()

    def take(self) -> EventBatch:
        batch, self.backlog = self.backlog, []
        self.ready.clear()
        return batch

    def fail(self, event: Error) -> None:
        self.failure = event
        self.ready.set()

    async def wait(self, timeout: float) -> bool:
        """Until something is delivered or the subscriber is poked; False after ``timeout`` seconds of nothing."""
        try:
            async with asyncio.timeout(timeout):
                await self.ready.wait()
        except TimeoutError:
            return False
        if not self.backlog and not self.overflowed:
            self.ready.clear()  # a poke: nothing to take
        return True


class Fanout:
    """One blocking XREAD over every stream this replica's subscribers follow, fanned out in memory."""

    def __init__(self, url: str, wake_key: str) -> None:
        self._url = url
        self._wake_key = wake_key
        self._wake_cursor = "0-0"
        self._wake_pending = False
        self._subs: dict[str, set[Subscription]] = {}
        self._cursors: dict[str, str] = {}
        self._local: set[str] = set()
        self._history: dict[str, EventBatch] = {}  # what this replica's writers stored of their running tasks
        self._ended: set[str] = set()
        self._idle = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._waker: redis.Redis | RedisCluster | None = None

    def start(self, waker: redis.Redis | RedisCluster) -> None:
        if self._task is not None:
            return
        self._waker = waker
        self._task = asyncio.create_task(self._run(), name="redis-fanout")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        if self._waker is not None:
            with contextlib.suppress(redis.RedisError, TimeoutError):  # Redis may be down: then the TTL removes it
                async with asyncio.timeout(1):
                    await self._waker.delete(self._wake_key)

    def subscribe(self, key: str, after: str) -> tuple[Subscription, bool]:
        """Register a subscriber (synchronously, so a caller's ``finally`` can always undo it).

        Returns it, and whether the reader must be woken to add the stream to its XREAD.
        """
        sub = Subscription()
        subs = self._subs.get(key)
        if subs is None:
            self._subs[key] = {sub}
            self._cursors[key] = after
            return sub, key not in self._local
        subs.add(sub)
        # Never past what a subscriber still needs: the XREAD reads from the earliest point (others drop repeats).
        if parse_event_id(after) < parse_event_id(self._cursors[key]):
            self._cursors[key] = after
            return sub, key not in self._local
        return sub, False

    def local_start(self, key: str) -> None:
        self._local.add(key)
        self._history.setdefault(key, [])

    def history(self, key: str, after: str) -> EventBatch | None:
        """The events after ``after`` of a task this replica writes, as stored; None if it writes no such task.
        Its followers here start from it instead of reading the log."""
        written = self._history.get(key)
        if written is None:
            return None
        start = parse_event_id(after)
        return [item for item in written if parse_event_id(item[0]) > start]

    async def local_end(self, key: str) -> None:
        self._local.discard(key)
        self._history.pop(key, None)
        delivered = key in self._ended
        self._ended.discard(key)
        if key in self._subs and not delivered:
            await self.join(key)  # someone still follows: read the rest (say, a reaper's terminal event) by XREAD

    def deliver(self, key: str, batch: EventBatch) -> None:
        """Hand a batch just stored by this replica to its local subscribers (they drop what they have)."""
        if key in self._local:
            self._history[key].extend(batch)
            if isinstance(batch[-1][1], Complete | Error):
                self._ended.add(key)  # its subscribers have the terminal event: no XREAD needed when it is released
        self._fan_out(key, batch)

    def _fan_out(self, key: str, batch: EventBatch) -> None:
        subs = self._subs.get(key)
        if subs:
            self._cursors[key] = max(self._cursors[key], batch[-1][0], key=parse_event_id)
            for sub in tuple(subs):
                sub.deliver(batch)

    def fail(self, key: str, event: Error) -> None:
        """End this replica's subscribers of ``key`` with ``event``, which the store could not take."""
        for sub in tuple(self._subs.get(key, ())):
            sub.fail(event)

    def poke(self) -> None:
        """Wake every subscriber to look again: the store stopped or started answering."""
        for subs in self._subs.values():
            for sub in subs:
                sub.ready.set()

    def unsubscribe(self, key: str, sub: Subscription) -> None:
        subs = self._subs.get(key)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[key]
                self._cursors.pop(key, None)

    async def join(self, key: str) -> None:
        """Have the live reads cover ``key`` (``subscribe`` said they may not yet) before its log is read."""
        await self.wake()

    async def wake(self) -> None:
        self._idle.set()
        if not self._wake_pending and self._waker is not None:
            self._wake_pending = True
            async with self._waker.pipeline() as pipe:
                pipe.xadd(self._wake_key, {b"w": b"1"}, maxlen=16, approximate=True)
                pipe.expire(self._wake_key, WAKE_TTL)
                await command(pipe.execute())

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            reader = redis.Redis.from_url(self._url, socket_timeout=None, socket_connect_timeout=5)
            try:
                while True:
                    await self._read_once(reader)
                    backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a lost connection must not end live reads: reconnect with backoff
                # An unreachable store is logged once, by StoreHealth; anything else is ours to tell.
                level = logging.DEBUG if isinstance(exc, UNREACHABLE) else logging.WARNING
                log.log(level, "redis stream reader failed (%s); reconnecting in %.1fs", type(exc).__name__, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, READER_BACKOFF_MAX)
            finally:
                await reader.aclose()

    async def _read_once(self, reader: redis.Redis) -> None:
        self._wake_pending = False
        if not self._subs:
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(BLOCK_MS / 1000):
                    await self._idle.wait()
            return
        streams: dict[Any, Any] = {self._wake_key: self._wake_cursor}
        streams.update((key, cursor) for key, cursor in self._cursors.items() if key not in self._local)
        async with asyncio.timeout(BLOCK_MS / 1000 + 10):
            response: Any = await reader.xread(streams, count=PAGE, block=BLOCK_MS)
        for raw_key, entries in response or ():
            key = text(raw_key)
            if not entries:
                continue
            if key == self._wake_key:
                self._wake_cursor = text(entries[-1][0])
                continue
            self._fan_out(key, decode_entries(entries))
