"""The Redis store on a real Redis Cluster (three primaries, conftest ``redis_cluster_url``): what a cluster adds to
the contract suite (test_store.py, run on it too): tasks spread over every node, live reads by one connection per
node, lease indexes of their own slots, cancels by the flag alone."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from redis.asyncio.cluster import RedisCluster

from llm_gateway.app import create_app
from llm_gateway.events import Complete, Event, Start, Text, TokenUsage
from llm_gateway.store.redis import RedisStore
from llm_gateway.store.redis_cluster import RedisClusterStore, node_url
from llm_gateway.store.redis_sharded import ShardedFanout
from tests.conftest import Emulator, gateway_settings
from tests.servers import serve
from tests.sse_client import read_all

DONE = Complete("ab", "end_turn", TokenUsage(1, 2), "m")


@pytest.fixture
async def admin(redis_cluster_url: str) -> AsyncIterator[RedisCluster]:
    client = RedisCluster.from_url(node_url(redis_cluster_url))
    try:
        yield await client.initialize()
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def opened(url: str, prefix: str, max_connections: int = 32) -> AsyncIterator[RedisClusterStore]:
    store = RedisStore.from_url(url, prefix=prefix, max_connections=max_connections)
    assert isinstance(store, RedisClusterStore)
    await store.connect()
    try:
        yield store
    finally:
        await store.close()


def node_of(admin: RedisCluster, key: str) -> str:
    node = admin.get_node_from_key(key)
    assert node is not None
    return node.name


async def connections(admin: RedisCluster) -> dict[str, list[dict[str, str]]]:
    """CLIENT LIST of every node, by node."""
    return {node.name: await admin.client_list(target_nodes=node) for node in admin.get_primaries()}


async def test_tasks_spread_over_every_node_and_one_connection_per_node_reads_them_all(
    redis_cluster_url: str, admin: RedisCluster
) -> None:
    prefix = f"spread:{uuid.uuid4().hex[:6]}:"
    async with (
        opened(redis_cluster_url, prefix) as writer,
        opened(redis_cluster_url, prefix, max_connections=4) as reader,
    ):
        task_ids = [f"t{i}" for i in range(60)]
        nodes = {task_id: node_of(admin, writer._keys.task(task_id)) for task_id in task_ids}
        assert len(set(nodes.values())) == 3, "60 tasks hash to every node"
        for task_id in task_ids:
            await writer.create_task(task_id, fingerprint="f", model="m", lease_seconds=5)
            await writer.start_task(task_id, owner="w", lease_seconds=5, event=Start(task_id, "m"))

        async def follow(task_id: str) -> list[Event]:
            out: list[Event] = []
            async with asyncio.timeout(10):
                async for batch in reader.follow(task_id, heartbeat=5):
                    out.extend(event for _, event in batch)
            return out

        before = await connections(admin)
        few = [asyncio.create_task(follow(task_id)) for task_id in task_ids[:3]]
        await asyncio.sleep(0.3)
        with_few = await connections(admin)
        many = [asyncio.create_task(follow(task_id)) for task_id in task_ids for _ in range(3)]
        await asyncio.sleep(0.5)
        with_many = await connections(admin)
        for task_id in task_ids:
            await writer.append(task_id, [Text(0, task_id)], owner="w")
            await writer.finish(task_id, DONE)
        results = await asyncio.gather(*few, *many)
        fanout = reader._fanout
        assert isinstance(fanout, ShardedFanout) and len(fanout._readers) == 3 and not fanout._joined
        assert all(not r.channels() and not r._waiters for r in fanout._readers.values()), "all left"
    expected = {task_id: [Start(task_id, "m"), Text(0, task_id), DONE] for task_id in task_ids}
    assert results == [expected[t] for t in task_ids[:3]] + [expected[t] for t in task_ids for _ in range(3)]
    for node, clients in with_many.items():
        subscribed = [int(client["ssub"]) for client in clients if int(client.get("ssub", 0))]
        assert subscribed == [list(nodes.values()).count(node)], f"{node}: one connection holds all its channels"
        # 60 followers on this node: the reader's pool (4 at most) and its one subscriber connection, no more.
        assert len(clients) - len(before[node]) <= 4 + 1, (node, len(before[node]), len(clients))
        assert len(clients) - len(with_few[node]) <= 4, "connections do not grow with followers"


async def test_a_lost_subscriber_connection_loses_nothing(redis_cluster_url: str, admin: RedisCluster) -> None:
    prefix = f"lost:{uuid.uuid4().hex[:6]}:"
    async with opened(redis_cluster_url, prefix) as writer, opened(redis_cluster_url, prefix) as reader:
        await writer.create_task("t1", fingerprint="f", model="m", lease_seconds=5)
        await writer.start_task("t1", owner="w", lease_seconds=5, event=Start("t1", "m"))
        got: list[Event] = []

        async def follow() -> None:
            async with asyncio.timeout(5):
                async for batch in reader.follow("t1", heartbeat=5):  # no heartbeat look will save it
                    got.extend(event for _, event in batch)

        follower = asyncio.create_task(follow())
        await writer.append("t1", [Text(0, "a")], owner="w")
        async with asyncio.timeout(5):
            while len(got) < 2:
                await asyncio.sleep(0.01)
        node = admin.get_node_from_key(writer._keys.events("t1"))
        assert await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub", target_nodes=node) == 1
        await writer.append("t1", [Text(0, "b")], owner="w")  # published to nobody: read from the log
        await writer.finish("t1", DONE)
        await follower
    assert got == [Start("t1", "m"), Text(0, "a"), Text(0, "b"), DONE]


async def test_a_replica_reaps_the_tasks_of_another_replica_s_lease_index(redis_cluster_url: str) -> None:
    prefix = f"reap:{uuid.uuid4().hex[:6]}:"
    async with opened(redis_cluster_url, prefix) as owner, opened(redis_cluster_url, prefix) as reaper:
        indexes = [reaper._keys.leases(shard) for shard in range(reaper.LEASE_SHARDS)]
        reaper._index = next(index for index in indexes if index != owner._index)  # each leases into its own
        await owner.create_task("t1", fingerprint="f", model="m", lease_seconds=5)
        await owner.start_task("t1", owner="r1", lease_seconds=1.0, event=Start("t1", "m"))
        assert await reaper.interrupt_lapsed() == []
        await asyncio.sleep(1.1)
        assert await reaper.interrupt_lapsed() == ["t1"]
        assert (await reaper.get_task("t1")).status == "interrupted"  # type: ignore[union-attr]
        assert await owner.interrupt_lapsed() == [] and await owner._redis.zcard(owner._index) == 0, "its entry went"


async def test_a_cancel_on_another_replica_reaches_the_owner_at_its_renewal(
    redis_cluster_url: str, emulator: Emulator
) -> None:
    options = {"redis_url": redis_cluster_url, "redis_key_prefix": f"cancel:{uuid.uuid4().hex[:6]}:"}
    settings = gateway_settings(emulator.url, task_lease_seconds=0.6, **options)
    async with serve(create_app(settings)) as a, serve(create_app(settings)) as b:
        async with httpx.AsyncClient(timeout=30) as client:
            body = {"prompt": "long [emu:deltas=1000] [emu:delay_ms=20]"}
            task_id = (await client.post(f"{a}/api/claude/prompt/async", json=body)).json()["task_id"]
            await asyncio.sleep(0.2)
            assert (await client.delete(f"{b}/api/claude/task/{task_id}")).status_code == 202
            async with asyncio.timeout(5):
                got = await read_all(client, f"{b}/api/claude/subscribe/{task_id}")
            status = (await client.get(f"{a}/api/claude/task/{task_id}")).json()
    assert got[-1].event == "error" and got[-1].json()["type"] == "cancelled"
    assert status["status"] == "cancelled"


@pytest.mark.parametrize("url", ["redis+cluster://127.0.0.1:1", "redis://127.0.0.1:1"])
async def test_a_cluster_is_named_by_its_url_or_the_flag(url: str) -> None:
    store = RedisStore.from_url(url, cluster=not url.startswith("redis+cluster"))
    await store.close()
    assert isinstance(store, RedisClusterStore)
