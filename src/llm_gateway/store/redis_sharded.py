"""Live reads on a Redis Cluster: sharded pub/sub, one connection per node per replica, fanned out in memory.

A cluster refuses an XREAD over streams of different slots (CROSSSLOT, even when one node holds them all), so
the one-Redis reader (redis_fanout.Fanout) cannot follow many tasks at once there. Instead every script that
writes a task's events also publishes them on the task's own sharded channel (SPUBLISH, Redis >= 7; the channel
is named as the task's events stream, so the script stays in its slot), and this replica keeps one connection
per node that SSUBSCRIBEs the channel of each task it follows there (one command per channel: one connection may
hold channels of any slots its node serves). Subscribers and their bookkeeping are Fanout's, unchanged.

Pub/sub keeps nothing, so nothing may fall between a channel and the log: a follower reads the log only once its
channel is subscribed (``join`` waits for the confirmation), and when a connection was lost its followers are
poked to read the log again once their channels are back. A node that fails or gives its slots away ends its
connection: the slot map is read again and each channel subscribed where its slot is now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection
from redis.exceptions import RedisError

from ..aio import cancel_and_wait
from ..errors import StoreUnavailable
from ..events import decode_event
from .base import EventBatch
from .redis_fanout import BLOCK_MS, COMMAND_TIMEOUT, READER_BACKOFF_MAX, UNREACHABLE, Fanout, Subscription, text

log = logging.getLogger(__name__)

PING_SECONDS = BLOCK_MS / 1000  # a quiet connection is pinged this often, and given up after twice as long


def decode_published(data: bytes) -> EventBatch:
    """What a script published: lines of ``<id> <event JSON>``."""
    batch: EventBatch = []
    for line in data.split(b"\n"):
        event_id, _, event = line.partition(b" ")
        batch.append((event_id.decode(), decode_event(event)))
    return batch


class ShardedFanout(Fanout):
    """Fanout over sharded pub/sub: a task's channel is named as its events key."""

    def __init__(self, cluster: RedisCluster) -> None:
        super().__init__("", "")
        self._cluster = cluster
        self._readers: dict[str, NodeReader] = {}  # node name -> its reader
        self._joined: dict[str, NodeReader] = {}  # events key -> the reader holding its channel

    def start(self, waker: object) -> None:
        """Nothing to start: a node's reader starts with the first channel this replica follows there."""

    async def stop(self) -> None:
        readers, self._readers = list(self._readers.values()), {}
        self._joined.clear()
        await cancel_and_wait(*(reader.task for reader in readers))

    def subscribe(self, key: str, after: str) -> tuple[Subscription, bool]:
        sub, _ = super().subscribe(key, after)
        return sub, key not in self._local  # each follower waits until the channel is there (``join``)

    async def join(self, key: str) -> None:
        if key in self._local or key not in self._subs:
            return
        reader = self._joined.get(key)
        if reader is None:
            reader = self._joined[key] = await self._reader_for(key)
        await reader.add(key.encode(), key)

    def unsubscribe(self, key: str, sub: Subscription) -> None:
        super().unsubscribe(key, sub)
        if key not in self._subs:
            self._leave(key)

    def local_start(self, key: str) -> None:
        super().local_start(key)
        self._leave(key)  # its writer hands its events to local subscribers

    async def local_end(self, key: str) -> None:
        await super().local_end(key)
        if key in self._joined:
            self.poke_key(key)  # read what came between the writer's end and the channel

    def poke_key(self, key: str) -> None:
        for sub in self._subs.get(key, ()):
            sub.ready.set()

    def deliver_published(self, key: str, data: bytes) -> None:
        if key in self._subs:
            self._fan_out(key, decode_published(data))

    def rehome(self, reader: NodeReader) -> None:
        """After ``reader``'s node failed or moved slots: each of its channels goes where its slot is now."""
        for channel, key in reader.channels():
            try:
                node = self._cluster.get_node_from_key(key)
            except Exception:  # the slot map is incomplete for now: stay, and try again at the next failure
                continue
            if node is not None and node.name != reader.name:
                self._joined[key] = target = self._reader(node)
                target.adopt(channel, key, reader.drop(channel))

    def _leave(self, key: str) -> None:
        reader = self._joined.pop(key, None)
        if reader is not None:
            reader.remove(key.encode())

    async def _reader_for(self, key: str) -> NodeReader:
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT):
                await self._cluster.initialize()  # the slot map (a no-op once read)
            node = self._cluster.get_node_from_key(key)
        except (*UNREACHABLE, RedisError) as exc:  # no node answers, or the slot map is incomplete for now
            raise StoreUnavailable(type(exc).__name__) from exc
        if node is None:
            raise StoreUnavailable(f"no node serves {key}")
        return self._reader(node)

    def _reader(self, node: ClusterNode) -> NodeReader:
        reader = self._readers.get(node.name)
        if reader is None:
            reader = self._readers[node.name] = NodeReader(self, self._cluster, node)
        return reader


class NodeReader:
    """One connection to one node, subscribed to the channels this replica follows there."""

    def __init__(self, fanout: ShardedFanout, cluster: RedisCluster, node: ClusterNode) -> None:
        self.name = node.name
        self._fanout = fanout
        self._cluster = cluster
        self._node = node
        self._keys: dict[bytes, str] = {}  # channel -> events key: what should be subscribed
        self._confirmed: set[bytes] = set()  # subscribed on the current connection
        self._waiters: dict[bytes, asyncio.Future[None]] = {}
        self._resubscribe: set[bytes] = set()  # to subscribe, sent by the reader (``adopt`` is synchronous)
        self._leaving: set[bytes] = set()  # to unsubscribe, sent by the reader (``remove`` is synchronous)
        self._unsubscribing: Counter[bytes] = Counter()  # SUNSUBSCRIBEs sent, not yet confirmed
        self._conn: Connection | None = None
        self.task = asyncio.create_task(self._run(), name=f"redis-sharded-{node.name}")

    def channels(self) -> list[tuple[bytes, str]]:
        return list(self._keys.items())

    async def add(self, channel: bytes, key: str) -> None:
        """Subscribe ``channel`` (of events ``key``) and wait until the node confirms it."""
        self._keys[channel] = key
        self._leaving.discard(channel)
        if channel in self._confirmed:
            return
        waiter = self._waiters.get(channel)
        if waiter is None:
            waiter = self._waiters[channel] = asyncio.get_running_loop().create_future()
            with contextlib.suppress(*UNREACHABLE):  # then the reader reconnects, and subscribes it again
                await self._send("SSUBSCRIBE", channel)
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT):
                await asyncio.shield(waiter)
        except TimeoutError as exc:
            raise StoreUnavailable("TimeoutError") from exc

    def adopt(self, channel: bytes, key: str, waiter: asyncio.Future[None] | None) -> None:
        """A channel moved here from another node's reader (with the future its follower may be waiting on):
        subscribed when this reader next reads, or connects."""
        self._keys[channel] = key
        self._leaving.discard(channel)
        if waiter is not None:
            self._waiters[channel] = waiter
        self._resubscribe.add(channel)

    def drop(self, channel: bytes) -> asyncio.Future[None] | None:
        """The channel goes to another node's reader: its waiter, if any, goes with it."""
        self._keys.pop(channel, None)
        self._confirmed.discard(channel)
        return self._waiters.pop(channel, None)

    def remove(self, channel: bytes) -> None:
        self._keys.pop(channel, None)
        waiter = self._waiters.pop(channel, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)  # a follower still waiting reads the log now (its task went local)
        if channel in self._confirmed:
            self._leaving.add(channel)

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            # RESP3: its pushes (messages, confirmations) and replies (PONG) cannot be mistaken for each other.
            conn: Connection = self._node.connection_class(**{**self._node.connection_kwargs, "protocol": 3})
            try:
                await self._session(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a lost node must not end live reads: read the slot map, reconnect
                backoff = 0.1 if self._conn is not None else min(backoff * 2, READER_BACKOFF_MAX)
                level = logging.DEBUG if isinstance(exc, UNREACHABLE) else logging.WARNING
                log.log(level, "sharded reader of %s failed (%r); reconnecting in %.1fs", self.name, exc, backoff)
            finally:
                self._conn = None
                self._confirmed.clear()
                self._unsubscribing.clear()
                with contextlib.suppress(Exception):
                    await conn.disconnect()
            await asyncio.sleep(backoff)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    await self._cluster.nodes_manager.initialize()
            self._fanout.rehome(self)  # what it held is subscribed again, here or elsewhere; each confirmation
            # pokes the channel's followers to read the log, for what came while it was away

    async def _session(self, conn: Connection) -> None:
        async with asyncio.timeout(COMMAND_TIMEOUT):
            await conn.connect()  # type: ignore[no-untyped-call]
        self._conn = conn
        self._resubscribe |= set(self._keys)
        pinged = False
        while True:
            await self._flush()
            response = await conn.read_response(timeout=PING_SECONDS, push_request=True)
            if response is None:
                if pinged:
                    raise TimeoutError(f"{self.name} did not answer a PING")
                await self._send("PING")
                pinged = True
                continue
            pinged = False
            self._handle(response)

    async def _flush(self) -> None:
        """Send what was asked of this connection while it read."""
        resubscribe, self._resubscribe = self._resubscribe, set()
        for channel in resubscribe:
            if channel in self._keys and channel not in self._confirmed:
                await self._send("SSUBSCRIBE", channel)
        leaving, self._leaving = self._leaving, set()
        for channel in leaving:
            if channel not in self._keys and channel in self._confirmed:
                self._confirmed.discard(channel)
                self._unsubscribing[channel] += 1
                await self._send("SUNSUBSCRIBE", channel)

    async def _send(self, *args: Any) -> None:
        conn = self._conn
        if conn is None:
            return
        async with asyncio.timeout(COMMAND_TIMEOUT):
            await conn.send_command(*args, check_health=False)

    def _handle(self, response: Any) -> None:
        if not isinstance(response, list) or len(response) < 3:
            return  # PONG
        kind, channel, data = text(response[0]), response[1], response[2]
        if kind == "smessage":
            key = self._keys.get(channel)
            if key is not None:
                self._fanout.deliver_published(key, data)
        elif kind == "ssubscribe":
            self._confirmed.add(channel)
            waiter = self._waiters.pop(channel, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            elif channel in self._keys:
                self._fanout.poke_key(self._keys[channel])  # subscribed again after a loss: read the log again
        elif kind == "sunsubscribe":
            if self._unsubscribing[channel] > 0:
                self._unsubscribing[channel] -= 1
                if not self._unsubscribing[channel]:
                    del self._unsubscribing[channel]  # one entry per channel ever left would add up
            elif channel in self._keys:  # the node dropped it: its slot moved
                raise ConnectionError(f"{self.name} no longer serves {text(channel)}")
