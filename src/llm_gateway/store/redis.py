"""The Redis store: task hashes, Redis Streams event logs, a lease zset, and one multiplexed reader per replica.

Layout (prefix ``llmgw:``, keys built by keys.RedisKeys): ``{<id>}:task`` hash, ``{<id>}:events`` stream (field
``e`` = event JSON; the task id in braces is their hash tag), ``running`` zset (task id -> lease deadline in server
ms), channel ``cancel`` (task ids), ``wake:<replica>``, a tiny stream that only this replica's reader watches (see
redis_fanout), and the app's small values under ``kv:``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import msgspec
import redis.asyncio as redis

from ..events import TERMINAL_STATUSES, Event, TaskInfo, encode_event
from ..keys import RedisKeys
from .base import Ending, EventBatch, EventKey, LogRules, format_event_id, parse_event_id
from .redis_fanout import COMMAND_TIMEOUT, PAGE, Fanout, decode_entries, text
from .redis_scripts import Scripts

ACTIVE_TTL = 24 * 3600  # a running task's keys outlive any generation; finished ones get STREAM_TTL_SECONDS
POOL_SIZE = 32  # connections for commands, per replica; live reads use one more, of their own


class RedisStore(LogRules):
    def __init__(self, client: redis.Redis, url: str, *, prefix: str = "llmgw:", stream_ttl: int = 3600) -> None:
        self._redis = client
        self._stream_ttl = stream_ttl
        self._keys = RedisKeys(prefix)
        self._fanout = Fanout(url, self._keys.wake(uuid.uuid4().hex))
        self._lua = Scripts(client)

    @property
    def _prefix(self) -> str:
        return self._keys.prefix

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

    async def connect(self) -> None:
        """Start the live reader. Redis need not be up: the reader retries, and commands fail until it is."""
        self._fanout.start(self._redis)

    async def ping(self) -> None:
        async with asyncio.timeout(2):
            await self._redis.ping()

    async def _create(self, info: TaskInfo, lease: int) -> TaskInfo | None:
        keys = [self._keys.task(info.task_id), self._keys.running]
        args: list[str | int] = [info.task_id, info.fingerprint, info.model, info.created_at, ACTIVE_TTL, lease]
        async with asyncio.timeout(COMMAND_TIMEOUT):
            reply = await self._lua.create(keys=keys, args=args)
        return None if reply == 1 else _task_info(dict(zip(reply[::2], reply[1::2], strict=True)))

    async def get_task(self, task_id: str) -> TaskInfo | None:
        async with asyncio.timeout(COMMAND_TIMEOUT):
            fields = await self._redis.hgetall(self._keys.task(task_id))
        return _task_info(fields) if fields else None

    async def _start(self, task_id: str, owner: str, lease: int, event: Event, at: str) -> str | None:
        keys = [self._keys.task(task_id), self._keys.events(task_id), self._keys.running]
        args: list[str | bytes | int] = [task_id, owner, lease, at, encode_event(event), ACTIVE_TTL]
        async with asyncio.timeout(COMMAND_TIMEOUT):
            reply = await self._lua.start(keys=keys, args=args)
        if reply is None:
            return None
        event_id = text(reply)
        self._fanout.local_start(keys[1])
        self._fanout.deliver(keys[1], [(event_id, event)])
        return event_id

    async def _append(self, task_id: str, events: Sequence[Event], owner: str) -> list[str] | None:
        keys = [self._keys.task(task_id), self._keys.events(task_id)]
        async with asyncio.timeout(COMMAND_TIMEOUT):
            ids = await self._lua.append(keys=keys, args=[owner, *map(encode_event, events)])
        if ids is None:
            return None
        batch = [(text(event_id), event) for event_id, event in zip(ids, events, strict=True)]
        if batch:
            self._fanout.deliver(keys[1], batch)
        return [event_id for event_id, _ in batch]

    async def _finish(self, task_id: str, end: Ending, *, only_if_lapsed: bool) -> bool:
        keys = [self._keys.task(task_id), self._keys.events(task_id), self._keys.running]
        args = [
            encode_event(end.event),
            end.status,
            msgspec.json.encode(end.result) if end.result else b"",
            msgspec.json.encode(end.error) if end.error else b"",
            end.at,
            self._stream_ttl,
            task_id,
            "1" if only_if_lapsed else "",
        ]
        async with asyncio.timeout(COMMAND_TIMEOUT):
            reply = await self._lua.finish(keys=keys, args=args)
        if reply is not None:
            self._fanout.deliver(keys[1], [(text(reply), end.event)])
        return reply is not None

    async def _lapsed(self) -> list[str]:
        async with asyncio.timeout(COMMAND_TIMEOUT):
            return [text(task_id) for task_id in await self._lua.lapsed(keys=[self._keys.running])]

    async def _renew(self, task_ids: Sequence[str], lease: int) -> list[str]:
        keys = [self._keys.running, *map(self._keys.task, task_ids)]
        async with asyncio.timeout(COMMAND_TIMEOUT):
            cancelled = await self._lua.renew(keys=keys, args=[lease, *task_ids])
        return [text(task_id) for task_id in cancelled]

    async def release(self, task_id: str) -> None:
        await self._fanout.local_end(self._keys.events(task_id))

    async def _read(self, task_id: str, after: EventKey | None) -> EventBatch:
        cursor = None if after is None else format_event_id(after)
        batch: EventBatch = []
        while True:
            page = await self._page(self._keys.events(task_id), cursor)
            batch.extend(page)
            if len(page) < PAGE:
                return batch
            cursor = page[-1][0]

    async def last_event_id(self, task_id: str) -> str | None:
        async with asyncio.timeout(COMMAND_TIMEOUT):
            entries: Any = await self._redis.xrevrange(self._keys.events(task_id), count=1)
        return text(entries[0][0]) if entries else None

    async def _page(self, key: str, after: str | None) -> EventBatch:
        start = "-" if after is None else f"({after}"
        async with asyncio.timeout(COMMAND_TIMEOUT):
            entries: Any = await self._redis.xrange(key, start, "+", count=PAGE)
        return decode_entries(entries)

    async def _follow(self, task_id: str, after: EventKey, heartbeat: float) -> AsyncGenerator[EventBatch]:
        key = self._keys.events(task_id)
        last = after
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
        finally:
            self._fanout.unsubscribe(key, sub)

    async def _ended(self, task_id: str) -> bool:
        """Finished, or gone (expired)."""
        async with asyncio.timeout(COMMAND_TIMEOUT):
            status = await self._redis.hget(self._keys.task(task_id), "status")
        return status is None or text(status) in TERMINAL_STATUSES

    async def request_cancel(self, task_id: str) -> None:
        async with asyncio.timeout(COMMAND_TIMEOUT):
            await self._lua.request_cancel(keys=[self._keys.task(task_id)], args=[task_id, self._keys.cancel])

    async def cancel_requests(self) -> AsyncIterator[str]:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT):
                await pubsub.subscribe(self._keys.cancel)
            while True:
                message = await pubsub.get_message(timeout=5.0)
                if message is not None and message["type"] == "message":
                    yield text(message["data"])
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def get_value(self, key: str) -> bytes | None:
        async with asyncio.timeout(COMMAND_TIMEOUT):
            value = await self._redis.get(self._keys.value(key))
        return None if value is None else value if isinstance(value, bytes) else value.encode()

    async def set_value(self, key: str, value: bytes, *, ttl: float) -> None:
        async with asyncio.timeout(COMMAND_TIMEOUT):
            await self._redis.set(self._keys.value(key), value, px=max(1, int(ttl * 1000)))

    async def set_value_if_absent(self, key: str, value: bytes, *, ttl: float) -> bool:
        async with asyncio.timeout(COMMAND_TIMEOUT):
            return bool(await self._redis.set(self._keys.value(key), value, px=max(1, int(ttl * 1000)), nx=True))

    async def refresh_value(self, key: str, value: bytes, *, ttl: float) -> bool:
        async with asyncio.timeout(COMMAND_TIMEOUT):
            return bool(await self._lua.refresh_if(keys=[self._keys.value(key)], args=[value, max(1, int(ttl * 1000))]))

    async def delete_value(self, key: str, *, if_equals: bytes | None = None) -> None:
        async with asyncio.timeout(COMMAND_TIMEOUT):
            if if_equals is None:
                await self._redis.delete(self._keys.value(key))
            else:
                await self._lua.delete_if(keys=[self._keys.value(key)], args=[if_equals])

    async def add_member(self, name: str, member: str) -> None:
        async with asyncio.timeout(COMMAND_TIMEOUT):
            await self._redis.sadd(self._keys.value(name), member)

    async def remove_member(self, name: str, member: str) -> None:
        async with asyncio.timeout(COMMAND_TIMEOUT):
            await self._redis.srem(self._keys.value(name), member)

    async def members(self, name: str) -> set[str]:
        async with asyncio.timeout(COMMAND_TIMEOUT):
            found: Any = await self._redis.smembers(self._keys.value(name))
        return {text(member) for member in found}

    async def close(self) -> None:
        await self._fanout.stop()
        await self._redis.aclose()


def _task_info(fields: dict[Any, Any]) -> TaskInfo:
    data = {text(k): text(v) for k, v in fields.items()}
    result, error = data.pop("result", ""), data.pop("error", "")
    data.pop("cancel", None)
    decoded = {
        "result": msgspec.json.decode(result) if result else None,
        "error": msgspec.json.decode(error) if error else None,
    }
    return msgspec.convert({**data, **decoded}, TaskInfo)
