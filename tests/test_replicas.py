"""Several replicas on one Redis, and on a Redis Cluster: separate server processes, as behind a load balancer."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Callable

import httpx
import pytest

from llm_gateway.emulator import emulated_text
from llm_gateway.events import Error
from llm_gateway.store import parse_event_id
from llm_gateway.store.redis import RedisStore
from tests.conftest import REPLICA_LEASE_SECONDS, Emulator, gateway_settings, replica_environment
from tests.servers import replica_process, serve
from tests.sse_client import Frame, frames, read_all

LEASE = REPLICA_LEASE_SECONDS


@pytest.fixture
def engine_env(engine_url: str, emulator: Emulator) -> dict[str, str]:
    """Replica processes on each engine: one Redis, and a Redis Cluster."""
    return replica_environment(engine_url, emulator)


def chunk_text(got: list[Frame]) -> str:
    return "".join(f.json()["chunk"] for f in got if f.event == "chunk")


def assert_ids_strictly_increase(ids: list[str | None]) -> None:
    keys = [parse_event_id(i) for i in ids if i is not None]
    assert None not in ids and keys == sorted(set(keys))


async def test_a_task_started_on_a_is_followed_and_resumed_on_b(engine_env: dict[str, str]) -> None:
    prompt = "two replicas [emu:deltas=60] [emu:delay_ms=10]"
    async with replica_process(engine_env) as (a, _), replica_process(engine_env) as (b, _):
        async with httpx.AsyncClient(timeout=30) as client:
            accepted = await client.post(f"{a}/api/claude/prompt/async", json={"prompt": prompt})
            task_id = accepted.json()["task_id"]
            first_client = asyncio.create_task(read_all(client, f"{b}/api/claude/subscribe/{task_id}"))

            half: list[Frame] = []
            async with client.stream("GET", f"{b}/api/claude/subscribe/{task_id}") as response:
                async for frame in frames(response):
                    half.append(frame)
                    if len(half) == 25:
                        break  # the second client drops mid-stream...
            rest = await read_all(  # ...and its EventSource comes back with Last-Event-ID
                client, f"{b}/api/claude/subscribe/{task_id}", headers={"Last-Event-ID": half[-1].id or ""}
            )
            whole = await first_client
    expected = emulated_text(prompt, 60)
    assert whole[0].event == "start" and whole[-1].event == "complete"
    assert chunk_text(whole) == expected
    assert chunk_text(half + rest) == expected
    assert_ids_strictly_increase([f.id for f in whole])
    assert_ids_strictly_increase([f.id for f in half + rest])
    assert [f.id for f in half + rest] == [f.id for f in whole]


async def test_cancel_on_another_replica(replica_env: dict[str, str]) -> None:
    async with replica_process(replica_env) as (a, _), replica_process(replica_env) as (b, _):
        async with httpx.AsyncClient(timeout=30) as client:
            body = {"prompt": "long [emu:deltas=1000] [emu:delay_ms=20]"}
            task_id = (await client.post(f"{a}/api/claude/prompt/async", json=body)).json()["task_id"]
            await asyncio.sleep(0.3)
            cancelled = await client.delete(f"{b}/api/claude/task/{task_id}")
            async with asyncio.timeout(5):
                got = await read_all(client, f"{b}/api/claude/subscribe/{task_id}")
            status = (await client.get(f"{a}/api/claude/task/{task_id}")).json()
    assert cancelled.status_code == 202
    assert got[-1].event == "error" and got[-1].json()["type"] == "cancelled"
    assert status["status"] == "cancelled"


async def test_a_killed_replica_s_task_ends_interrupted_within_two_leases(replica_env: dict[str, str]) -> None:
    async with replica_process(replica_env) as (a, doomed), replica_process(replica_env) as (b, _):
        async with httpx.AsyncClient(timeout=30) as client:
            body = {"prompt": "doomed [emu:deltas=1000] [emu:delay_ms=20]"}
            task_id = (await client.post(f"{a}/api/claude/prompt/async", json=body)).json()["task_id"]
            got: list[Frame] = []

            async def follow() -> None:
                async with client.stream("GET", f"{b}/api/claude/subscribe/{task_id}") as response:
                    async for frame in frames(response):
                        got.append(frame)

            follower = asyncio.create_task(follow())
            while len(got) < 5:
                await asyncio.sleep(0.02)
            doomed.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            async with asyncio.timeout(2 * LEASE + 3):
                await follower
            ended_after = time.monotonic() - killed_at
            status = (await client.get(f"{b}/api/claude/task/{task_id}")).json()
    assert got[-1].event == "error" and got[-1].json()["type"] == "interrupted"
    assert status["status"] == "interrupted" and status["error"]["type"] == "interrupted"
    # Two lease periods, plus the reaper's own period and process scheduling on a loaded CI machine.
    assert ended_after < 2 * LEASE + 1.5, ended_after
    assert_ids_strictly_increase([f.id for f in got])


@pytest.fixture
def redis_store_factory(redis_url: str) -> Callable[[str], RedisStore]:
    return lambda prefix: RedisStore.from_url(redis_url, prefix=prefix)


async def test_shutdown_gives_grace_then_interrupts(
    emulator: Emulator, redis_url: str, redis_store_factory: Callable[[str], RedisStore]
) -> None:
    from llm_gateway.app import create_app

    prefix = f"shut:{uuid.uuid4().hex[:8]}:"
    settings = gateway_settings(emulator.url, redis_url=redis_url, redis_key_prefix=prefix, shutdown_grace_seconds=1)
    async with serve(create_app(settings)) as url, httpx.AsyncClient(base_url=url) as client:
        short = await client.post(
            "/api/claude/prompt/async", json={"prompt": "quick [emu:deltas=20] [emu:delay_ms=20]"}
        )
        long = await client.post("/api/claude/prompt/async", json={"prompt": "slow [emu:deltas=500] [emu:delay_ms=20]"})
        short_id, long_id = short.json()["task_id"], long.json()["task_id"]
    # The server is gone: read what it left in Redis.
    store = redis_store_factory(prefix)
    try:
        finished, cut = await store.get_task(short_id), await store.get_task(long_id)
        last = (await store.read(long_id))[-1][1]
    finally:
        await store.close()
    assert finished is not None and finished.status == "completed", "finished within the grace period"
    assert cut is not None and cut.status == "interrupted"
    assert isinstance(last, Error) and last.type == "interrupted"
