"""The Redis store on a Redis Cluster (``REDIS_URL=redis+cluster://host:port``, or ``REDIS_CLUSTER=1``).

The layout is the one-Redis layout (redis.py): every script touches the keys of one task (its hash tag) or one
lease index, so it runs in one slot; keys of different tasks land on different nodes. What differs, and why:

- Live reads: sharded pub/sub, one connection per node per replica (redis_sharded.py). One XREAD cannot span
  slots, so the one-Redis reader cannot follow tasks of many slots at once.
- Lease indexes: ``LEASE_SHARDS`` zsets, each in a slot of its own; a replica adds to one, the reaper reads all.
  A task's script cannot keep an index in another slot, so this store does, with commands of its own: before
  CREATE (a replica that dies just after it still leaves its task where the reaper looks; if CREATE finds the
  task there already, the extra entry only costs the reaper a look at a live lease), beside START, and after
  FINISH (the owner's ended tasks leave its index at its next renewal; the reaper drops what it ended).
- Renewals: one RENEW per slot, in parallel (a cluster pipeline refuses EVALSHA).
- Cancels: the flag in the task's hash alone, which the owner reads at its next renewal (within a third of a
  lease). A PUBLISH would go to every node of the cluster; a sharded channel per task would cost the owner a
  SSUBSCRIBE and a SUNSUBSCRIBE per task; the flag costs nothing per stream and is never lost.
- Health: every primary is pinged, not one node.
- Commands: at most ``max_connections`` in flight. A cluster client has no blocking pool: past its per-node limit
  it fails a command where the one-Redis pool waits for a connection.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import TypeVar

from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from ..events import Event, TaskInfo
from .base import Ending
from .redis import HEALTH_CHECK_SECONDS, POOL_SIZE, RedisStore, wrote_end
from .redis_fanout import COMMAND_TIMEOUT, Fanout
from .redis_sharded import ShardedFanout

T = TypeVar("T")


def node_url(url: str) -> str:
    """``redis+cluster://host:port`` -> ``redis://host:port`` (any node; the client finds the others)."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme.removesuffix('+cluster')}{sep}{rest}"


def cluster_client(url: str, max_connections: int) -> RedisCluster:
    """The cluster client, as the one-Redis one (RedisStore.from_url): no socket_timeout, short retries, health
    checks."""
    return RedisCluster.from_url(
        node_url(url),
        max_connections=max_connections,
        socket_timeout=None,
        socket_connect_timeout=2,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=3),
        health_check_interval=HEALTH_CHECK_SECONDS,
    )


class RedisClusterStore(RedisStore):
    LEASE_SHARDS = 16

    def __init__(
        self,
        client: RedisCluster,
        *,
        prefix: str = "llmgw:",
        stream_ttl: int = 3600,
        outage_grace: float = 30.0,
        max_connections: int = POOL_SIZE,
    ) -> None:
        self._cluster = client
        self._gate = asyncio.Semaphore(max_connections)
        self._ended: list[str] = []  # tasks this replica ended: to leave its lease index at the next renewal
        super().__init__(client, "", prefix=prefix, stream_ttl=stream_ttl, outage_grace=outage_grace)

    async def ping(self) -> None:
        """Every primary answers (a cluster missing one serves none of its slots; by default it serves nothing)."""
        await self._call(self._cluster.ping(target_nodes=RedisCluster.PRIMARIES), timeout=2)

    def _open_fanout(self, url: str) -> Fanout:
        return ShardedFanout(self._cluster)

    def _inline(self, index: str) -> list[str]:
        return []  # another slot: kept by this store's own commands

    def _channel(self, task_id: str) -> str:
        return self._keys.events(task_id)

    async def _call(self, reply: Awaitable[T], *, timeout: float = COMMAND_TIMEOUT) -> T:
        return await super()._call(self._gated(reply), timeout=timeout)

    async def _gated(self, reply: Awaitable[T]) -> T:
        try:
            await self._gate.acquire()
        except BaseException:
            if inspect.iscoroutine(reply):
                reply.close()  # never sent
            raise
        try:
            return await reply
        finally:
            self._gate.release()

    async def _create(self, info: TaskInfo, lease: int, first: Event | None) -> TaskInfo | None:
        if lease >= 0:
            await self._script(self._lua.lease, [self._index], [lease, info.task_id, ""])
        return await super()._create(info, lease, first)

    async def _start(self, task_id: str, owner: str, lease: int, event: Event, at: str) -> str | None:
        started = super()._start(task_id, owner, lease, event, at)
        if lease < 0:
            return await started
        touch = self._script(self._lua.lease, [self._index], [lease, task_id, "XX"])
        event_id, _ = await asyncio.gather(started, touch)
        return event_id

    async def _finish(self, task_id: str, end: Ending, *, only_if_lapsed: bool) -> bool:
        index = self._due.pop(task_id, None)  # where the reaper found it; None: the owner ends it
        reply = await self._end(task_id, end, only_if_lapsed, index or self._index)
        if index is None:
            self._ended.append(task_id)
        elif isinstance(reply, int) and reply > 0:  # its lease runs on: look again when it would lapse
            await self._call(self._cluster.zadd(index, {task_id: reply}, xx=True))
        else:
            await self._call(self._cluster.zrem(index, task_id))
        return wrote_end(reply)

    async def _renew(self, task_ids: Sequence[str], lease: int) -> list[str]:
        ended, self._ended = self._ended, []
        try:
            return await self._renew_leases(task_ids, lease, ended=ended)
        except BaseException:
            self._ended[:0] = ended
            raise

    def _groups(self, task_ids: Sequence[str]) -> list[Sequence[str]]:
        by_slot: dict[int, list[str]] = {}
        for task_id in task_ids:
            by_slot.setdefault(self._cluster.keyslot(self._keys.task(task_id)), []).append(task_id)
        return list(by_slot.values())

    async def request_cancel(self, task_id: str) -> None:
        await self._script(self._lua.request_cancel, [self._keys.task(task_id)], [task_id, ""])

    async def cancel_requests(self) -> AsyncIterator[str]:
        # Nothing pushed: the owner reads the flag at its next renewal (see the module's docstring).
        nothing: tuple[str, ...] = ()
        for task_id in nothing:
            yield task_id
