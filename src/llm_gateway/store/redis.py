"""The Redis store: task hashes, Redis Streams event logs, a lease zset, and one multiplexed reader per replica.

Layout (prefix ``llmgw:``): ``task:{id}`` hash, ``events:{id}`` stream (field ``e`` = event JSON),
``running`` zset (task id -> lease deadline in server ms), channel ``cancel`` (task ids), and
``wake:{replica}``, a tiny stream that only this replica's reader watches.

Live reads: ``follow`` never blocks a connection of its own. It registers with ``_Fanout``, whose single
``XREAD BLOCK`` covers every followed stream. A new stream joins that read by an XADD to the wake stream,
which is part of the same XREAD: unlike ``CLIENT UNBLOCK`` this cannot be lost in a race with the read.
Streams of tasks running on this replica stay out of the XREAD: their writer hands each stored batch to
local subscribers directly, and when the writer is done the stream joins the XREAD if anyone still follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import msgspec
import redis.asyncio as redis

from ..aio import cancel_and_wait
from ..events import (
    TERMINAL_STATUSES,
    Complete,
    Error,
    Event,
    TaskInfo,
    Terminal,
    decode_event,
    encode_event,
    terminal_outcome,
)
from .base import EventBatch, TaskEnded, format_event_id, now_iso, parse_event_id

log = logging.getLogger(__name__)

ACTIVE_TTL = 24 * 3600  # a running task's keys outlive any generation; finished ones get STREAM_TTL_SECONDS
PAGE = 1000
BLOCK_MS = 5000
COMMAND_TIMEOUT = 10.0
POOL_SIZE = 32  # connections for commands, per replica; live reads use one more, of their own
SUBSCRIBER_BACKLOG = 4096  # events buffered for one slow subscriber before it falls back to XRANGE

# A queued task is leased too: if its replica dies before starting it, the reaper still ends it.
_CREATE = """
if redis.call('HSETNX', KEYS[1], 'task_id', ARGV[1]) == 0 then return redis.call('HGETALL', KEYS[1]) end
redis.call('HSET', KEYS[1], 'status', 'queued', 'created_at', ARGV[4], 'updated_at', ARGV[4],
           'model', ARGV[3], 'fingerprint', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[5])
if tonumber(ARGV[6]) >= 0 then
  local t = redis.call('TIME')
  redis.call('ZADD', KEYS[2], t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[6]), ARGV[1])
end
return 1
"""

# Appends only while the task runs on this owner: nothing may follow a terminal event.
_APPEND = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' or redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then
  return false
end
local ids = {}
for i = 2, #ARGV do ids[#ids + 1] = redis.call('XADD', KEYS[2], '*', 'e', ARGV[i]) end
return ids
"""

_START = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return false end
redis.call('HSET', KEYS[1], 'status', 'running', 'owner', ARGV[2], 'updated_at', ARGV[4])
if tonumber(ARGV[3]) >= 0 then redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), ARGV[1]) end
local id = redis.call('XADD', KEYS[2], '*', 'e', ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[6])
return id
"""

# ARGV[8]: when set, finish only if the lease lapsed (the reaper's call), judged by the server's clock.
_FINISH = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then redis.call('ZREM', KEYS[3], ARGV[7]) return false end
if status ~= 'queued' and status ~= 'running' then return false end
if ARGV[8] ~= '' then
  local t = redis.call('TIME')
  local deadline = redis.call('ZSCORE', KEYS[3], ARGV[7])
  if deadline and tonumber(deadline) > t[1] * 1000 + math.floor(t[2] / 1000) then return false end
end
local id = redis.call('XADD', KEYS[2], '*', 'e', ARGV[1])
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'updated_at', ARGV[5], 'result', ARGV[3], 'error', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('EXPIRE', KEYS[2], ARGV[6])
redis.call('ZREM', KEYS[3], ARGV[7])
return id
"""

# KEYS[1] the lease zset, KEYS[i+1] the hash of task ARGV[i+1]; returns the ids whose cancel was requested.
_RENEW = """
local t = redis.call('TIME')
local deadline = t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[1])
local cancelled = {}
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', deadline, ARGV[i])
  if redis.call('HGET', KEYS[i], 'cancel') == '1' then cancelled[#cancelled + 1] = ARGV[i] end
end
return cancelled
"""

_REQUEST_CANCEL = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'cancel', '1') end
return redis.call('PUBLISH', KEYS[2], ARGV[1])
"""

_LAPSED = """
local t = redis.call('TIME')
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', t[1] * 1000 + math.floor(t[2] / 1000), 'LIMIT', 0, 100)
"""

_REFRESH_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

_DELETE_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_INTERRUPTED = Error("interrupted", "the replica running this task stopped before it finished", retryable=True)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decode_entries(entries: list[Any]) -> EventBatch:
    return [(_text(entry_id), decode_event(fields[b"e"])) for entry_id, fields in entries]


class _Subscription:
    __slots__ = ("backlog", "overflowed", "ready")

    def __init__(self) -> None:
        self.backlog: EventBatch = []
        self.overflowed = False
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


class _Fanout:
    """One blocking XREAD over every stream this replica's subscribers follow, fanned out in memory."""

    def __init__(self, url: str, wake_key: str) -> None:
        self._url = url
        self._wake_key = wake_key
        self._wake_cursor = "0-0"
        self._wake_pending = False
        self._subs: dict[str, set[_Subscription]] = {}
        self._cursors: dict[str, str] = {}
        self._local: set[str] = set()
        self._ended: set[str] = set()
        self._idle = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._waker: redis.Redis | None = None

    def start(self, waker: redis.Redis) -> None:
        self._waker = waker
        self._task = asyncio.create_task(self._run(), name="redis-fanout")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    def subscribe(self, key: str, after: str) -> tuple[_Subscription, bool]:
        """Register a subscriber (synchronously, so a caller's ``finally`` can always undo it).

        Returns it, and whether the reader must be woken to add the stream to its XREAD.
        """
        sub = _Subscription()
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

    async def local_end(self, key: str) -> None:
        self._local.discard(key)
        if key in self._subs and key not in self._ended:
            await self.wake()  # someone still follows: read the rest (say, a reaper's terminal event) by XREAD
        self._ended.discard(key)

    def deliver(self, key: str, batch: EventBatch) -> None:
        """Hand a batch just stored by this replica to its local subscribers (they drop what they have)."""
        if key in self._local and isinstance(batch[-1][1], Complete | Error):
            self._ended.add(key)  # its subscribers have the terminal event: no XREAD needed when it is released
        self._fan_out(key, batch)

    def _fan_out(self, key: str, batch: EventBatch) -> None:
        subs = self._subs.get(key)
        if subs:
            self._cursors[key] = max(self._cursors[key], batch[-1][0], key=parse_event_id)
            for sub in tuple(subs):
                sub.deliver(batch)

    def unsubscribe(self, key: str, sub: _Subscription) -> None:
        subs = self._subs.get(key)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[key]
                self._cursors.pop(key, None)

    async def wake(self) -> None:
        self._idle.set()
        if not self._wake_pending and self._waker is not None:
            self._wake_pending = True
            async with asyncio.timeout(COMMAND_TIMEOUT):
                await self._waker.xadd(self._wake_key, {b"w": b"1"}, maxlen=16, approximate=True)

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
                log.warning("redis stream reader failed (%s); reconnecting in %.1fs", type(exc).__name__, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
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
            key = _text(raw_key)
            if not entries:
                continue
            if key == self._wake_key:
                self._wake_cursor = _text(entries[-1][0])
                continue
            self._fan_out(key, _decode_entries(entries))


class RedisStore:
    def __init__(self, client: redis.Redis, url: str, *, prefix: str = "llmgw:", stream_ttl: int = 3600) -> None:
        self._redis = client
        self._prefix = prefix
        self._stream_ttl = stream_ttl
        self._fanout = _Fanout(url, f"{prefix}wake:{uuid.uuid4().hex}")
        self._create = client.register_script(_CREATE)
        self._start = client.register_script(_START)
        self._finish = client.register_script(_FINISH)
        self._renew = client.register_script(_RENEW)
        self._append = client.register_script(_APPEND)
        self._request_cancel = client.register_script(_REQUEST_CANCEL)
        self._refresh_if = client.register_script(_REFRESH_IF)
        self._delete_if = client.register_script(_DELETE_IF)
        self._lapsed = client.register_script(_LAPSED)
        self._running_key = f"{prefix}running"
        self._cancel_channel = f"{prefix}cancel"
        self._fanout.start(client)

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str = "llmgw:", stream_ttl: int = 3600, max_connections: int = POOL_SIZE
    ) -> RedisStore:
        # No socket_timeout: on Python 3.11 redis-py wraps every read in wait_for, a Task per command. Callers
        # bound their waits with asyncio.timeout instead (COMMAND_TIMEOUT here, the runner's own elsewhere).
        # A bounded pool: a burst of commands waits for a connection instead of opening one each.
        pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=COMMAND_TIMEOUT,
            socket_timeout=None,
            socket_connect_timeout=5,
            health_check_interval=0,
        )
        return cls(redis.Redis.from_pool(pool), url, prefix=prefix, stream_ttl=stream_ttl)  # owns (closes) the pool

    def _task_key(self, task_id: str) -> str:
        return f"{self._prefix}task:{task_id}"

    def _events_key(self, task_id: str) -> str:
        return f"{self._prefix}events:{task_id}"

    async def ping(self) -> None:
        async with asyncio.timeout(2):
            await self._redis.ping()

    async def create_task(
        self, task_id: str, *, fingerprint: str, model: str, lease_seconds: float | None
    ) -> tuple[TaskInfo, bool]:
        now = now_iso()
        keys = [self._task_key(task_id), self._running_key]
        args: list[str | int] = [task_id, fingerprint, model, now, ACTIVE_TTL, _lease_ms(lease_seconds)]
        async with asyncio.timeout(COMMAND_TIMEOUT):
            reply = await self._create(keys=keys, args=args)
        if reply == 1:
            info = TaskInfo(
                task_id=task_id, status="queued", created_at=now, updated_at=now, model=model, fingerprint=fingerprint
            )
            return info, True
        return _task_info(dict(zip(reply[::2], reply[1::2], strict=True))), False

    async def get_task(self, task_id: str) -> TaskInfo | None:
        async with asyncio.timeout(COMMAND_TIMEOUT):
            fields = await self._redis.hgetall(self._task_key(task_id))
        return _task_info(fields) if fields else None

    async def start_task(self, task_id: str, *, owner: str, lease_seconds: float | None, event: Event) -> str:
        keys = [self._task_key(task_id), self._events_key(task_id), self._running_key]
        args: list[str | bytes | int] = [
            task_id,
            owner,
            _lease_ms(lease_seconds),
            now_iso(),
            encode_event(event),
            ACTIVE_TTL,
        ]
        async with asyncio.timeout(COMMAND_TIMEOUT):
            reply = await self._start(keys=keys, args=args)
        if reply is None:
            return ""
        event_id = _text(reply)
        self._fanout.local_start(keys[1])
        self._fanout.deliver(keys[1], [(event_id, event)])
        return event_id

    async def append(self, task_id: str, events: Sequence[Event], *, owner: str) -> str:
        key = self._events_key(task_id)
        ids = await self._append(keys=[self._task_key(task_id), key], args=[owner, *map(encode_event, events)])
        if ids is None:
            raise TaskEnded(task_id)
        batch = [(_text(event_id), event) for event_id, event in zip(ids, events, strict=True)]
        self._fanout.deliver(key, batch)
        return batch[-1][0]

    async def finish(self, task_id: str, event: Terminal, *, only_if_lapsed: bool = False) -> bool:
        status, result, error = terminal_outcome(event)
        keys = [self._task_key(task_id), self._events_key(task_id), self._running_key]
        args = [
            encode_event(event),
            status,
            msgspec.json.encode(result) if result else b"",
            msgspec.json.encode(error) if error else b"",
            now_iso(),
            self._stream_ttl,
            task_id,
            "1" if only_if_lapsed else "",
        ]
        async with asyncio.timeout(COMMAND_TIMEOUT):
            reply = await self._finish(keys=keys, args=args)
        if reply is not None:
            self._fanout.deliver(keys[1], [(_text(reply), event)])
        return reply is not None

    async def release(self, task_id: str) -> None:
        await self._fanout.local_end(self._events_key(task_id))

    async def read(self, task_id: str, after: str | None = None) -> EventBatch:
        after = None if after is None else format_event_id(parse_event_id(after))
        batch: EventBatch = []
        while True:
            page = await self._page(self._events_key(task_id), after)
            batch.extend(page)
            if len(page) < PAGE:
                return batch
            after = page[-1][0]

    async def _page(self, key: str, after: str | None) -> EventBatch:
        start = "-" if after is None else f"({after}"
        async with asyncio.timeout(COMMAND_TIMEOUT):
            entries: Any = await self._redis.xrange(key, start, "+", count=PAGE)
        return _decode_entries(entries)

    async def follow(
        self, task_id: str, after: str | None = None, *, heartbeat: float = 15.0
    ) -> AsyncIterator[EventBatch]:
        key = self._events_key(task_id)
        last = (0, 0) if after is None else parse_event_id(after)
        sub, needs_wake = self._fanout.subscribe(key, format_event_id(last))
        try:
            if needs_wake:
                await self._fanout.wake()
            catch_up, first = True, True
            while True:
                if catch_up:
                    # What the reader delivered before we joined, or what a slow subscriber dropped.
                    sub.overflowed = False
                    sub.take()
                    batch = await self._page(key, None if last == (0, 0) else format_event_id(last))
                    catch_up = len(batch) == PAGE
                    if first and not batch and await self._ended(task_id):
                        return  # resumed at or after the terminal event: nothing more will come
                    first = False
                elif sub.overflowed:
                    catch_up = True
                    continue
                elif sub.backlog:
                    batch = []
                    seen = last
                    for item in sub.take():  # the same event may come both locally and by XREAD
                        if (item_key := parse_event_id(item[0])) > seen:
                            batch.append(item)
                            seen = item_key
                else:
                    try:
                        async with asyncio.timeout(heartbeat):
                            await sub.ready.wait()
                    except TimeoutError:
                        if await self._ended(task_id):
                            # Ended while the reader had not handed us its last events yet: read them (or,
                            # if nothing is left because the log expired, stop).
                            catch_up = first = True
                            continue
                        yield []
                    continue
                if batch:
                    last = parse_event_id(batch[-1][0])
                    yield batch
                    if isinstance(batch[-1][1], Complete | Error):
                        return
        finally:
            self._fanout.unsubscribe(key, sub)

    async def _ended(self, task_id: str) -> bool:
        """Finished, or gone (expired)."""
        async with asyncio.timeout(COMMAND_TIMEOUT):
            status = await self._redis.hget(self._task_key(task_id), "status")
        return status is None or _text(status) in TERMINAL_STATUSES

    async def renew_leases(self, task_ids: Sequence[str], *, owner: str, lease_seconds: float) -> list[str]:
        if not task_ids:
            return []
        keys = [self._running_key, *map(self._task_key, task_ids)]
        async with asyncio.timeout(COMMAND_TIMEOUT):
            cancelled = await self._renew(keys=keys, args=[int(lease_seconds * 1000), *task_ids])
        return [_text(task_id) for task_id in cancelled]

    async def interrupt_lapsed(self) -> list[str]:
        async with asyncio.timeout(COMMAND_TIMEOUT):
            candidates = [_text(task_id) for task_id in await self._lapsed(keys=[self._running_key])]
        return [task_id for task_id in candidates if await self.finish(task_id, _INTERRUPTED, only_if_lapsed=True)]

    async def request_cancel(self, task_id: str) -> None:
        async with asyncio.timeout(COMMAND_TIMEOUT):
            await self._request_cancel(keys=[self._task_key(task_id), self._cancel_channel], args=[task_id])

    async def cancel_requests(self) -> AsyncIterator[str]:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self._cancel_channel)
            while True:
                message = await pubsub.get_message(timeout=5.0)
                if message is not None and message["type"] == "message":
                    yield _text(message["data"])
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _value_key(self, key: str) -> str:
        return f"{self._prefix}kv:{key}"

    async def get_value(self, key: str) -> bytes | None:
        async with asyncio.timeout(COMMAND_TIMEOUT):
            value = await self._redis.get(self._value_key(key))
        return None if value is None else value if isinstance(value, bytes) else value.encode()

    async def set_value(self, key: str, value: bytes, *, ttl: float) -> None:
        async with asyncio.timeout(COMMAND_TIMEOUT):
            await self._redis.set(self._value_key(key), value, px=max(1, int(ttl * 1000)))

    async def set_value_if_absent(self, key: str, value: bytes, *, ttl: float) -> bool:
        async with asyncio.timeout(COMMAND_TIMEOUT):
            return bool(await self._redis.set(self._value_key(key), value, px=max(1, int(ttl * 1000)), nx=True))

    async def refresh_value(self, key: str, value: bytes, *, ttl: float) -> bool:
        async with asyncio.timeout(COMMAND_TIMEOUT):
            return bool(await self._refresh_if(keys=[self._value_key(key)], args=[value, max(1, int(ttl * 1000))]))

    async def delete_value(self, key: str, *, if_equals: bytes | None = None) -> None:
        async with asyncio.timeout(COMMAND_TIMEOUT):
            if if_equals is None:
                await self._redis.delete(self._value_key(key))
            else:
                await self._delete_if(keys=[self._value_key(key)], args=[if_equals])

    async def add_member(self, name: str, member: str) -> None:
        async with asyncio.timeout(COMMAND_TIMEOUT):
            await self._redis.sadd(self._value_key(name), member)

    async def remove_member(self, name: str, member: str) -> None:
        async with asyncio.timeout(COMMAND_TIMEOUT):
            await self._redis.srem(self._value_key(name), member)

    async def members(self, name: str) -> set[str]:
        async with asyncio.timeout(COMMAND_TIMEOUT):
            found: Any = await self._redis.smembers(self._value_key(name))
        return {_text(member) for member in found}

    async def close(self) -> None:
        await self._fanout.stop()
        await self._redis.aclose()


def _lease_ms(lease_seconds: float | None) -> int:
    return -1 if lease_seconds is None else int(lease_seconds * 1000)  # -1: no lease, never reaped


def _task_info(fields: dict[Any, Any]) -> TaskInfo:
    data = {_text(k): _text(v) for k, v in fields.items()}
    result, error = data.pop("result", ""), data.pop("error", "")
    data.pop("cancel", None)
    decoded = {
        "result": msgspec.json.decode(result) if result else None,
        "error": msgspec.json.decode(error) if error else None,
    }
    return msgspec.convert({**data, **decoded}, TaskInfo)
