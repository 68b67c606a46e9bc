"""The Redis store: task hashes, Redis Streams event logs, lease indexes, and one multiplexed reader per replica.

Layout (prefix ``llmgw:``, keys built by keys.RedisKeys): ``{<id>}:task`` hash (its ``lease`` field: the lease
deadline in server ms), ``{<id>}:events`` stream (field ``e`` = event JSON; the task id in braces is their hash
tag), ``leases:{<shard>}`` lease indexes (zsets: task id -> deadline, where the reaper looks; see redis_scripts),
channel ``cancel`` (task ids), ``wake:<replica>``, a tiny stream that only this replica's reader watches (see
redis_fanout), and the app's small values under ``kv:``. Every script touches the keys of one task, or one index:
the same layout runs on a Redis Cluster (redis_cluster.RedisClusterStore).
"""

from __future__ import annotations

import asyncio
import time
import uuid
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Sequence
from typing import Any, TypeVar

import msgspec
import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError, TimeoutError as RedisTimeoutError

from ..errors import StoreUnavailable
from ..events import TERMINAL_STATUSES, Error, Event, TaskInfo, encode_event
from ..keys import RedisKeys
from .base import UNAVAILABLE, Ending, EventBatch, EventKey, LogRules, format_event_id, parse_event_id
from .health import StoreHealth
from .redis_fanout import COMMAND_TIMEOUT, PAGE, Fanout, command, decode_entries, text
from .redis_lean import LeanRedis
from .redis_scripts import Scripts

ACTIVE_TTL = 24 * 3600  # a running task's keys outlive any generation; finished ones get STREAM_TTL_SECONDS
POOL_SIZE = 32  # connections for commands, per replica; live reads use one more, of their own
HEALTH_CHECK_SECONDS = 15  # a pooled connection idle this long is pinged before it is used again
RETRY_SECONDS = 0.5  # a follower whose reads fail tries again this often (or when the store answers again)
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")

T = TypeVar("T")


class RedisStore(LogRules):
    """One Redis (or Valkey). ``from_url`` opens a ``RedisClusterStore`` for a cluster URL, or with ``cluster``."""

    LEASE_SHARDS = 1  # lease indexes; one Redis needs no more than one

    def __init__(
        self,
        client: redis.Redis | RedisCluster,
        url: str,
        *,
        prefix: str = "llmgw:",
        stream_ttl: int = 3600,
        outage_grace: float = 30.0,
        lean: LeanRedis | None = None,
    ) -> None:
        self._redis = client
        self._lean = lean  # the scripts' connection, if the URL allows one (redis_lean.py); else redis-py's pool
        self._stream_ttl = stream_ttl
        self._grace = outage_grace
        self._keys = RedisKeys(prefix)
        self._id = uuid.uuid4().hex
        self._index = self._keys.leases(zlib.crc32(self._id.encode()) % self.LEASE_SHARDS)  # where it leases tasks
        self._due: dict[str, str] = {}  # task id -> the lease index where the reaper found it
        self._fanout = self._open_fanout(url)
        self._health = StoreHealth(self.ping, self._fanout.poke)
        self._lua = Scripts(client)

    def _open_fanout(self, url: str) -> Fanout:
        return Fanout(url, self._keys.wake(self._id))

    def _inline(self, index: str) -> list[str]:
        """The lease index as the last key of a task's script, which keeps it (one Redis: one node, no slots)."""
        return [index]

    def _channel(self, task_id: str) -> str:
        """Where a task's scripts publish its new events: nowhere (live reads are XREADs)."""
        return ""

    @property
    def _prefix(self) -> str:
        return self._keys.prefix

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "llmgw:",
        stream_ttl: int = 3600,
        outage_grace: float = 30.0,
        max_connections: int = POOL_SIZE,
        cluster: bool = False,
    ) -> RedisStore:
        if cluster or url.startswith(CLUSTER_SCHEMES):
            from .redis_cluster import RedisClusterStore, cluster_client

            return RedisClusterStore(
                cluster_client(url, max_connections),
                prefix=prefix,
                stream_ttl=stream_ttl,
                outage_grace=outage_grace,
                max_connections=max_connections,
            )
        # No socket_timeout: on Python 3.11 redis-py sends every command through wait_for, a Task per command.
        # Every command is bounded by asyncio.timeout instead (``command``: COMMAND_TIMEOUT, or the caller's).
        # A bounded pool: a burst of commands waits for a connection instead of opening one each.
        # After an outage the pool holds connections the server has dropped: redis-py tries a command that
        # fails on one again on a new connection (after a health-check PING if it sat idle), so the first
        # requests after a recovery succeed. A command tried twice is written once: appends carry their offset,
        # a start repeated by its owner answers the same id, a second finish changes nothing.
        pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=COMMAND_TIMEOUT,
            socket_timeout=None,
            socket_connect_timeout=2,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=3),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
            health_check_interval=HEALTH_CHECK_SECONDS,
        )
        client = redis.Redis.from_pool(pool)  # owns (closes) the pool
        lean = LeanRedis.from_url(url)
        return cls(client, url, prefix=prefix, stream_ttl=stream_ttl, outage_grace=outage_grace, lean=lean)

    async def connect(self) -> None:
        """Start the live reader and the health probe. Redis need not be up: both retry, and commands fail
        (StoreUnavailable) until it is."""
        self._fanout.start(self._redis)
        self._health.start()

    async def ping(self) -> None:
        await self._call(self._redis.ping(), timeout=2)

    async def _call(self, reply: Awaitable[T], *, timeout: float = COMMAND_TIMEOUT) -> T:
        """Every command of the store: bounded, StoreUnavailable when out of reach, and an answer noted."""
        result = await command(reply, timeout=timeout)
        self._health.answered()
        return result

    async def _script(self, script: AsyncScript, keys: Sequence[str], args: Sequence[str | bytes | int]) -> Any:
        """Run one of the store's scripts (``self._lua``) as ``_call`` runs a command."""
        if self._lean is None:
            return await self._call(script(keys=keys, args=args))
        return await self._call(self._lean.script(script, keys, args))

    async def _create(self, info: TaskInfo, lease: int, first: Event | None) -> TaskInfo | None:
        task_id = info.task_id
        keys = [self._keys.task(task_id), self._keys.events(task_id), *self._inline(self._index)]
        args: list[str | bytes | int] = [task_id, info.fingerprint, info.model, info.created_at, ACTIVE_TTL, lease]
        args += [info.owner, b"" if first is None else encode_event(first), uuid.uuid4().hex]  # "": queued
        reply = await self._script(self._lua.create, keys, args)
        if isinstance(reply, list):
            return _task_info(_pairs(reply))
        if first is not None:  # as _start
            # Its writer hands each batch to this replica's followers: the live reads need not cover it (no
            # wake-up, no XREAD or channel) unless someone still follows it when it is released.
            self._fanout.local_start(keys[1])
            self._fanout.deliver(keys[1], [(text(reply), first)])
        return None

    async def get_task(self, task_id: str) -> TaskInfo | None:
        key = self._keys.task(task_id)
        if self._lean is None:
            fields = await self._call(self._redis.hgetall(key))
        else:  # every request about a task asks this: on the lean connection, the pool stays small
            fields = _pairs(await self._call(self._lean.call("HGETALL", key)))
        return _task_info(fields) if fields else None

    async def _start(self, task_id: str, owner: str, lease: int, event: Event, at: str) -> str | None:
        keys = [self._keys.task(task_id), self._keys.events(task_id), *self._inline(self._index)]
        args: list[str | bytes | int] = [
            task_id,
            owner,
            lease,
            at,
            encode_event(event),
            ACTIVE_TTL,
            self._channel(task_id),
        ]
        reply = await self._script(self._lua.start, keys, args)
        if reply is None:
            return None
        event_id = text(reply)
        self._fanout.local_start(keys[1])
        self._fanout.deliver(keys[1], [(event_id, event)])
        return event_id

    async def _append(self, task_id: str, events: Sequence[Event], owner: str, offset: int | None) -> list[str] | None:
        keys = [self._keys.task(task_id), self._keys.events(task_id)]
        args = [owner, "" if offset is None else offset, self._channel(task_id), *map(encode_event, events)]
        ids = await self._script(self._lua.append, keys, args)
        if ids is None:
            return None
        batch = [(text(event_id), event) for event_id, event in zip(ids, events, strict=True)]
        if batch:
            self._fanout.deliver(keys[1], batch)
        return [event_id for event_id, _ in batch]

    async def _finish(self, task_id: str, end: Ending, *, only_if_lapsed: bool) -> bool:
        return wrote_end(await self._end(task_id, end, only_if_lapsed, self._due.pop(task_id, self._index)))

    async def _end(self, task_id: str, end: Ending, only_if_lapsed: bool, index: str) -> Any:
        """The FINISH script's answer: the terminal event's id; a lease's deadline (the reaper's call, while the
        lease runs: 0 if it has none); None if nothing was left to end."""
        keys = [self._keys.task(task_id), self._keys.events(task_id), *self._inline(index)]
        args = [
            encode_event(end.event),
            end.status,
            msgspec.json.encode(end.result) if end.result else b"",
            msgspec.json.encode(end.error) if end.error else b"",
            end.at,
            self._stream_ttl,
            task_id,
            "1" if only_if_lapsed else "",
            self._channel(task_id),
        ]
        reply = await self._script(self._lua.finish, keys, args)
        if wrote_end(reply):
            self._fanout.deliver(keys[1], [(text(reply), end.event)])
        return reply

    async def _lapsed(self) -> list[str]:
        indexes = [self._keys.leases(shard) for shard in range(self.LEASE_SHARDS)]
        found = await asyncio.gather(*(self._script(self._lua.lapsed, [index], []) for index in indexes))
        self._due = {text(task_id): index for index, due in zip(indexes, found, strict=True) for task_id in due}
        return list(self._due)

    async def _renew(self, task_ids: Sequence[str], lease: int) -> list[str]:
        return await self._renew_leases(task_ids, lease, ended=[])

    async def _renew_leases(self, task_ids: Sequence[str], lease: int, *, ended: list[str]) -> list[str]:
        """Extend the leases in the tasks' hashes and in this replica's lease index (dropping ``ended`` from it)."""
        if not task_ids and not ended:
            return []
        index_args: list[str | int] = [lease, len(ended), *ended, *task_ids]
        renew_index = self._script(self._lua.renew_index, [self._index], index_args)
        renew = (
            self._script(self._lua.renew, [self._keys.task(task_id) for task_id in group], [lease, *group])
            for group in self._groups(task_ids)
        )
        _, *cancelled = await asyncio.gather(renew_index, *renew)
        return [text(task_id) for group in cancelled for task_id in group]

    def _groups(self, task_ids: Sequence[str]) -> list[Sequence[str]]:
        """Tasks whose keys one script may touch together: with one Redis, all."""
        return [task_ids] if task_ids else []

    async def release(self, task_id: str) -> None:
        await self._fanout.local_end(self._keys.events(task_id))

    def abandon(self, task_id: str, event: Error) -> None:
        self._fanout.fail(self._keys.events(task_id), event)

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
        entries: Any = await self._call(self._redis.xrevrange(self._keys.events(task_id), count=1))
        return text(entries[0][0]) if entries else None

    async def _page(self, key: str, after: str | None) -> EventBatch:
        start = "-" if after is None else f"({after}"
        entries: Any = await self._call(self._redis.xrange(key, start, "+", count=PAGE))
        return decode_entries(entries)

    async def _follow(self, task_id: str, after: EventKey, heartbeat: float) -> AsyncGenerator[EventBatch]:
        """Live batches: pushed by the reader (or this replica's writer), and ``look``ed up in the log when the
        push may have missed something: at the start, after a slow subscriber's overflow, on a heartbeat, and
        when the store answers again. While the store does not answer the follower waits, up to the grace;
        then, or if the store came back without the task, it ends with UNAVAILABLE."""
        key = self._keys.events(task_id)
        last = after
        sub, needs_wake = self._fanout.subscribe(key, format_event_id(last))
        look, first = True, True
        failing_since: float | None = None
        try:
            while True:
                if look:
                    sub.overflowed = False
                    sub.take()  # what the reader delivered before we joined, or what overflowed: read it instead
                    attempt = time.monotonic()
                    try:
                        status: str | None
                        written = self._fanout.history(key, format_event_id(last)) if first else None
                        if written is not None:  # this replica writes it: no need to read the log
                            batch, status = written, "running"
                        else:
                            if needs_wake:
                                await self._fanout.join(key)
                                needs_wake = False
                            batch, status = await self._look(task_id, key, last)
                    except StoreUnavailable:
                        failing_since = failing_since or attempt
                        if self._out_for(failing_since) >= self._grace:
                            yield [(format_event_id(last), UNAVAILABLE)]
                            return
                        await sub.wait(RETRY_SECONDS)  # poked when the store answers again
                        continue
                    failing_since = None
                    look = len(batch) == PAGE
                    if not batch and status is None and not first:
                        yield [(format_event_id(last), UNAVAILABLE)]  # the store came back without the task
                        return
                    if not batch and _over(status):
                        return  # unknown, or resumed at or after the terminal event: nothing more will come
                    first = False
                elif sub.overflowed:
                    look = True
                    continue
                elif sub.backlog:
                    batch = []
                    seen = last
                    for item in sub.take():  # the same event may come both locally and by XREAD
                        if (item_key := parse_event_id(item[0])) > seen:
                            batch.append(item)
                            seen = item_key
                elif sub.failure is not None:
                    yield [(format_event_id(last), sub.failure)]  # this replica's writer could not store it
                    return
                else:
                    silent = self._health.silent_for()
                    if silent is not None and silent >= self._grace:
                        yield [(format_event_id(last), UNAVAILABLE)]
                        return
                    poked = await sub.wait(heartbeat if silent is None else min(heartbeat, self._grace - silent))
                    # Look in the log on a heartbeat (it may have ended while the reader had not handed us its
                    # last events yet) and when poked (the store may be back without the task), once it answers.
                    look = self._health.silent_for() is None and not sub.backlog and sub.failure is None
                    if not poked:
                        yield []
                    continue
                if batch:
                    last = parse_event_id(batch[-1][0])
                    yield batch
        finally:
            self._fanout.unsubscribe(key, sub)

    async def _look(self, task_id: str, key: str, last: EventKey) -> tuple[EventBatch, str | None]:
        """The events after ``last``; when there are none, the task's status too (None: gone). One script."""
        start = "-" if last == (0, 0) else f"({format_event_id(last)}"
        keys = [self._keys.task(task_id), key]
        page, status = await self._script(self._lua.look, keys, [start, PAGE])
        entries = [(entry_id, _pairs(fields)) for entry_id, fields in page]
        return decode_entries(entries), None if status is None else text(status)

    def _out_for(self, failing_since: float) -> float:
        """How long the store has failed a follower: its own failed reads, or the probe's silence if longer."""
        return max(time.monotonic() - failing_since, self._health.silent_for() or 0.0)

    async def request_cancel(self, task_id: str) -> None:
        await self._script(self._lua.request_cancel, [self._keys.task(task_id)], [task_id, self._keys.cancel])

    async def cancel_requests(self) -> AsyncIterator[str]:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            await self._call(pubsub.subscribe(self._keys.cancel))
            while True:
                # Not ``_call``: no message within the timeout is no answer from the store.
                message = await command(pubsub.get_message(timeout=5.0), timeout=5.0 + COMMAND_TIMEOUT)
                if message is not None and message["type"] == "message":
                    yield text(message["data"])
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def get_value(self, key: str) -> bytes | None:
        value = await self._call(self._redis.get(self._keys.value(key)))
        return None if value is None else value if isinstance(value, bytes) else value.encode()

    async def set_value(self, key: str, value: bytes, *, ttl: float) -> None:
        await self._call(self._redis.set(self._keys.value(key), value, px=_ms(ttl)))

    async def set_value_if_absent(self, key: str, value: bytes, *, ttl: float) -> bool:
        return bool(await self._call(self._redis.set(self._keys.value(key), value, px=_ms(ttl), nx=True)))

    async def refresh_value(self, key: str, value: bytes, *, ttl: float) -> bool:
        return bool(await self._script(self._lua.refresh_if, [self._keys.value(key)], [value, _ms(ttl)]))

    async def delete_value(self, key: str, *, if_equals: bytes | None = None) -> None:
        if if_equals is None:
            await self._call(self._redis.delete(self._keys.value(key)))
        else:
            await self._script(self._lua.delete_if, [self._keys.value(key)], [if_equals])

    async def count_in_window(self, key: str, *, ttl: float) -> int:
        return int(await self._script(self._lua.count_in_window, [self._keys.value(key)], [_ms(ttl)]))

    async def claim_slot(self, key: str, member: str, *, limit: int, ttl: float) -> bool:
        args: list[str | int] = [member, limit, _ms(ttl)]
        return bool(await self._script(self._lua.claim_slot, [self._keys.value(key)], args))

    async def release_slot(self, key: str, member: str) -> None:
        await self._call(self._redis.zrem(self._keys.value(key), member))

    async def add_member(self, name: str, member: str) -> None:
        await self._call(self._redis.sadd(self._keys.value(name), member))

    async def remove_member(self, name: str, member: str) -> None:
        await self._call(self._redis.srem(self._keys.value(name), member))

    async def members(self, name: str) -> set[str]:
        found: Any = await self._call(self._redis.smembers(self._keys.value(name)))
        return {text(member) for member in found}

    async def close(self) -> None:
        await self._health.stop()
        await self._fanout.stop()
        if self._lean is not None:
            await self._lean.close()
        await self._redis.aclose()


def wrote_end(reply: Any) -> bool:
    """FINISH wrote the terminal event (its answer is the event's id)."""
    return isinstance(reply, bytes | str)


def _pairs(flat: list[Any]) -> dict[Any, Any]:
    """A hash or stream entry as Redis sends it (field, value, field, value...) as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _over(status: str | None) -> bool:
    """Nothing more will come to the log: the task ended, or is gone."""
    return status is None or status in TERMINAL_STATUSES


def _ms(ttl: float) -> int:
    return max(1, int(ttl * 1000))


def _task_info(fields: dict[Any, Any]) -> TaskInfo:
    data = {text(k): text(v) for k, v in fields.items()}
    result, error = data.pop("result", ""), data.pop("error", "")
    data.pop("cancel", None)
    decoded = {
        "result": msgspec.json.decode(result) if result else None,
        "error": msgspec.json.decode(error) if error else None,
    }
    return msgspec.convert({**data, **decoded}, TaskInfo)
