"""One contract, both backends: the embedded store and a real Redis behave the same."""

from __future__ import annotations

import asyncio
import contextlib
import time
import tracemalloc
from collections.abc import AsyncIterator
from types import SimpleNamespace
from unittest.mock import ANY

import pytest

from llm_gateway.emulator import emulated_deltas
from llm_gateway.events import Complete, Error, Event, Start, TaskInfo, Text, TokenUsage
from llm_gateway.sse import aclose
from llm_gateway.store import EventBatch, MalformedEventId, Store, TaskEnded, memory, parse_event_id
from llm_gateway.store.base import INTERRUPTED, UNAVAILABLE
from llm_gateway.store.memory import MemoryStore
from llm_gateway.store.redis import RedisStore
from llm_gateway.store.redis_cluster import RedisClusterStore
from tests.conftest import admin_client

DONE = Complete("ab", "end_turn", TokenUsage(1, 2), "m")


async def started(store: Store, task_id: str = "t1") -> str:
    await store.create_task(task_id, fingerprint="f", model="m", lease_seconds=5)
    return await store.start_task(task_id, owner="r1", lease_seconds=5, event=Start(task_id, "m"))


async def collect(store: Store, task_id: str, after: str | None = None) -> list[tuple[str, Event]]:
    out = []
    async with asyncio.timeout(5):
        async for batch in store.follow(task_id, after, heartbeat=0.2):
            out.extend(batch)
    return out


@contextlib.asynccontextmanager
async def two_replicas(url: str, prefix: str) -> AsyncIterator[tuple[RedisStore, RedisStore]]:
    """Two replicas' stores on one Redis (or cluster) under ``prefix``, connected; closed after."""
    a, b = RedisStore.from_url(url, prefix=prefix), RedisStore.from_url(url, prefix=prefix)
    await a.connect()
    await b.connect()
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def test_create_is_idempotent(store: Store) -> None:
    info, created = await store.create_task("t1", fingerprint="f1", model="m", lease_seconds=5)
    assert created and info.status == "queued" and info.fingerprint == "f1"
    again, created_again = await store.create_task("t1", fingerprint="other", model="m", lease_seconds=5)
    assert not created_again
    assert again.fingerprint == "f1" and again.created_at == info.created_at


async def test_unknown_task(store: Store) -> None:
    assert await store.get_task("nope") is None
    assert await store.read("nope") == []


async def test_append_read_after_and_finish(store: Store) -> None:
    first = await started(store)
    assert (await store.get_task("t1")).status == "running"  # type: ignore[union-attr]
    await store.append("t1", [Text(0, "a")], owner="r1")
    last = await store.append("t1", [Text(0, "b"), Text(0, "c")], owner="r1")
    assert await store.finish("t1", DONE)
    events = await store.read("t1")
    ids = [event_id for event_id, _ in events]
    assert [event for _, event in events] == [Start("t1", "m"), Text(0, "a"), Text(0, "b"), Text(0, "c"), DONE]
    assert ids[0] == first and ids[3] == last
    assert [parse_event_id(i) for i in ids] == sorted({parse_event_id(i) for i in ids}), "ids strictly increase"
    assert [e for _, e in await store.read("t1", after=ids[2])] == [Text(0, "c"), DONE]
    info = await store.get_task("t1")
    assert info is not None and info.status == "completed" and info.result is not None
    assert info.result.response == "ab" and info.result.usage == TokenUsage(1, 2)


async def test_terminal_status_never_changes(store: Store) -> None:
    await started(store)
    assert await store.finish("t1", Error("cancelled", "by request"))
    assert not await store.finish("t1", DONE)
    info = await store.get_task("t1")
    assert info is not None and info.status == "cancelled" and info.error is not None
    assert info.error.type == "cancelled"
    assert sum(isinstance(e, Complete | Error) for _, e in await store.read("t1")) == 1


async def test_start_refused_once_finished(store: Store) -> None:
    await store.create_task("t1", fingerprint="f", model="m", lease_seconds=5)
    assert await store.finish("t1", Error("cancelled", "before it started"))
    assert await store.start_task("t1", owner="r1", lease_seconds=5, event=Start("t1", "m")) == ""


async def test_start_of_an_unknown_task_is_refused(store: Store) -> None:
    assert await store.start_task("nope", owner="r1", lease_seconds=5, event=Start("nope", "m")) == ""
    assert await store.get_task("nope") is None


async def test_an_append_tried_again_after_a_lost_answer_is_written_once(store: Store) -> None:
    await started(store)
    batch = [Text(0, "a"), Text(0, "b")]
    first = await store.append("t1", batch, owner="r1", offset=0)
    again = await store.append("t1", batch, owner="r1", offset=0)  # its answer was lost: the writer tries again
    more = await store.append("t1", [*batch, Text(0, "c")], owner="r1", offset=0)  # with what came meanwhile
    await store.append("t1", [Text(0, "d")], owner="r1", offset=3)
    events = await store.read("t1")
    assert [e for _, e in events] == [Start("t1", "m"), Text(0, "a"), Text(0, "b"), Text(0, "c"), Text(0, "d")]
    assert first == again == events[2][0] and more == events[3][0]


async def test_a_start_tried_again_by_its_owner_answers_the_same_id(store: Store) -> None:
    first = await started(store)
    assert await store.start_task("t1", owner="r1", lease_seconds=5, event=Start("t1", "m")) == first
    assert await store.start_task("t1", owner="r2", lease_seconds=5, event=Start("t1", "m")) == ""
    assert [e for _, e in await store.read("t1")] == [Start("t1", "m")]


async def created_started(store: Store, task_id: str = "t1", *, lease_seconds: float = 5) -> tuple[TaskInfo, bool]:
    """``started`` in one step."""
    first = Start(task_id, "m")
    return await store.create_task(
        task_id, fingerprint="f", model="m", lease_seconds=lease_seconds, owner="r1", first=first
    )


async def test_a_task_created_started_runs_on_its_owner_from_its_first_event(store: Store) -> None:
    info, created = await created_started(store)
    assert created and (info.task_id, info.status, info.owner) == ("t1", "running", "r1")
    stored = await store.get_task("t1")
    assert stored is not None and (stored.status, stored.owner, stored.fingerprint) == ("running", "r1", "f")
    [(first, event)] = await store.read("t1")
    assert event == Start("t1", "m") and await store.last_event_id("t1") == first
    follower = asyncio.create_task(collect(store, "t1"))
    await asyncio.sleep(0.05)
    with pytest.raises(TaskEnded):
        await store.append("t1", [Text(0, "x")], owner="r2")
    last = await store.append("t1", [Text(0, "a")], owner="r1", offset=0)  # the owner appends right after
    assert await store.finish("t1", DONE)
    events = await follower
    assert events == [(first, Start("t1", "m")), (last, Text(0, "a")), (ANY, DONE)]
    assert await store.read("t1") == events


async def test_creating_started_leaves_an_existing_task_as_it_is(store: Store) -> None:
    """Idempotent: another replica's queued task stays queued (not taken over); a running one keeps its owner."""
    await store.create_task("t1", fingerprint="f", model="m", lease_seconds=5)
    again = Start("t1", "again")
    info, created = await store.create_task("t1", fingerprint="g", model="m", lease_seconds=5, owner="r2", first=again)
    assert not created and (info.status, info.owner, info.fingerprint) == ("queued", "", "f")
    assert (await store.get_task("t1")).status == "queued"  # type: ignore[union-attr]
    assert await store.read("t1") == []
    with pytest.raises(TaskEnded):
        await store.append("t1", [Text(0, "x")], owner="r2")
    assert await store.start_task("t1", owner="r1", lease_seconds=5, event=Start("t1", "m")), "its replica starts it"

    await created_started(store, "t2")
    info, created = await store.create_task("t2", fingerprint="g", model="m", lease_seconds=5, owner="r2", first=again)
    assert not created and (info.status, info.owner) == ("running", "r1")
    assert [e for _, e in await store.read("t2")] == [Start("t2", "m")]
    with pytest.raises(TypeError):
        await store.create_task("t3", fingerprint="f", model="m", lease_seconds=5, owner="r1")
    assert await store.get_task("t3") is None


async def test_a_task_created_started_ends_interrupted_once_its_lease_lapses(store: Store) -> None:
    # Leases of a second, as in test_lapsed_lease_ends_interrupted: a loaded machine cannot lapse them early.
    await created_started(store, "t1", lease_seconds=1.0)
    await created_started(store, "t2", lease_seconds=1.0)
    assert await store.interrupt_lapsed() == []
    await store.renew_leases(["t2"], owner="r1", lease_seconds=5)
    await asyncio.sleep(1.1)
    assert await store.interrupt_lapsed() == ["t1"]
    assert [e for _, e in await store.read("t1")] == [Start("t1", "m"), INTERRUPTED]
    assert (await store.get_task("t1")).status == "interrupted"  # type: ignore[union-attr]
    with pytest.raises(TaskEnded):
        await store.append("t1", [Text(0, "late")], owner="r1")
    assert (await store.get_task("t2")).status == "running"  # type: ignore[union-attr]


async def test_both_backends_end_a_lapsed_task_with_the_same_event(store: Store) -> None:
    await store.create_task("t1", fingerprint="f", model="m", lease_seconds=0.05)
    await asyncio.sleep(0.1)
    assert await store.interrupt_lapsed() == ["t1"]
    assert [e for _, e in await store.read("t1")] == [INTERRUPTED]


async def test_follow_replays_then_goes_live(store: Store) -> None:
    await started(store)
    await store.append("t1", [Text(0, "a")], owner="r1")
    follower = asyncio.create_task(collect(store, "t1"))
    await asyncio.sleep(0.05)
    for piece in "bcd":
        await store.append("t1", [Text(0, piece)], owner="r1")
        await asyncio.sleep(0.01)
    await store.finish("t1", DONE)
    events = [event for _, event in await follower]
    assert events == [Start("t1", "m"), Text(0, "a"), Text(0, "b"), Text(0, "c"), Text(0, "d"), DONE]


async def test_follow_after_an_id_has_no_gap_and_no_duplicate(store: Store) -> None:
    await started(store)
    ids = [await store.append("t1", [Text(0, str(i))], owner="r1") for i in range(5)]
    followers = [asyncio.create_task(collect(store, "t1", after=ids[2])) for _ in range(3)]
    await asyncio.sleep(0.05)
    await store.append("t1", [Text(0, "5")], owner="r1")
    await store.finish("t1", DONE)
    for follower in followers:
        assert [e for _, e in await follower] == [Text(0, "3"), Text(0, "4"), Text(0, "5"), DONE]


async def test_follow_of_finished_task_ends(store: Store) -> None:
    await started(store)
    await store.finish("t1", DONE)
    assert [e for _, e in await collect(store, "t1")] == [Start("t1", "m"), DONE]


async def test_follow_sends_heartbeats_while_idle(store: Store) -> None:
    await started(store)
    batches = []
    async with asyncio.timeout(5):
        async for batch in store.follow("t1", heartbeat=0.05):
            batches.append(batch)
            if len(batches) == 3:
                break
    assert batches[0] == [(batches[0][0][0], Start("t1", "m"))]
    assert batches[1:] == [[], []]


async def test_many_tasks_followed_at_once(store: Store) -> None:
    task_ids = [f"t{i}" for i in range(20)]
    for task_id in task_ids:
        await started(store, task_id)
    followers = {task_id: asyncio.create_task(collect(store, task_id)) for task_id in task_ids}
    await asyncio.sleep(0.05)
    for round_ in range(3):
        for task_id in task_ids:
            await store.append(task_id, [Text(0, f"{task_id}-{round_}")], owner="r1")
    for task_id in task_ids:
        await store.finish(task_id, DONE)
    for task_id, follower in followers.items():
        texts = [e.text for _, e in await follower if isinstance(e, Text)]
        assert texts == [f"{task_id}-{r}" for r in range(3)]


async def test_lapsed_lease_ends_interrupted(store: Store) -> None:
    await store.create_task("t1", fingerprint="f", model="m", lease_seconds=5)
    # Leases long enough that a loaded machine (a cluster's extra round trips) cannot lapse them before the check.
    await store.start_task("t1", owner="r1", lease_seconds=1.0, event=Start("t1", "m"))
    await store.create_task("t2", fingerprint="f", model="m", lease_seconds=5)
    await store.start_task("t2", owner="r1", lease_seconds=1.0, event=Start("t2", "m"))
    assert await store.interrupt_lapsed() == []
    await store.renew_leases(["t2"], owner="r1", lease_seconds=5)
    await asyncio.sleep(1.1)
    assert await store.interrupt_lapsed() == ["t1"]
    info = await store.get_task("t1")
    assert info is not None and info.status == "interrupted"
    last = (await store.read("t1"))[-1][1]
    assert isinstance(last, Error) and last.type == "interrupted"
    assert (await store.get_task("t2")).status == "running"  # type: ignore[union-attr]


async def test_cancel_requests_reach_listeners(store: Store) -> None:
    received: asyncio.Queue[str] = asyncio.Queue()

    async def listen() -> None:
        async for task_id in store.cancel_requests():
            await received.put(task_id)

    listener = asyncio.create_task(listen())
    await asyncio.sleep(0.1)  # let the subscription land
    if isinstance(store, MemoryStore):
        assert listener.done(), "one process: nothing to push, the runner cancels its own tasks"
        return
    if isinstance(store, RedisClusterStore):
        assert listener.done(), "a cluster pushes nothing: the owner reads the flag at renewal"
        return
    await store.request_cancel("t9")
    async with asyncio.timeout(5):
        assert await received.get() == "t9"
    listener.cancel()
    with pytest.raises(asyncio.CancelledError):
        await listener


async def test_malformed_event_id_is_rejected(store: Store) -> None:
    await started(store)
    with pytest.raises(MalformedEventId):
        await store.read("t1", after="abc")


async def test_finished_tasks_expire() -> None:
    store = MemoryStore(stream_ttl=0)
    await started(store)
    await store.finish("t1", DONE)
    await asyncio.sleep(0.01)
    assert await store.get_task("t1") is None


async def answered(store: Store, task_id: str, deltas: int = 50) -> list[Event]:
    """A finished log of a ``deltas``-delta answer, as the emulator's would be; its events."""
    await started(store, task_id)
    texts = emulated_deltas(task_id, deltas)
    await store.append(task_id, [Text(0, text) for text in texts], owner="r1")
    done = Complete("".join(texts), "end_turn", TokenUsage(3, deltas), "m")
    await store.finish(task_id, done)
    return [Start(task_id, "m"), *(Text(0, text) for text in texts), done]


async def test_the_embedded_store_keeps_finished_logs_within_its_bytes() -> None:
    store = MemoryStore(stream_ttl=60, max_bytes=40_000)
    await started(store, "running")
    await store.append("running", [Text(0, "x" * 100_000)], owner="r1")  # over the cap alone, but running
    task_ids = [f"t{i:03}" for i in range(100)]
    for task_id in task_ids:
        newest = await answered(store, task_id)
        assert store.finished_bytes <= store.max_bytes
    kept = [task_id for task_id in task_ids if await store.get_task(task_id) is not None]
    assert 5 < len(kept) < 20 and kept == task_ids[-len(kept) :], "the oldest finished went first"
    assert await store.read("t000") == [] and await store.last_event_id("t000") is None
    assert [event for _, event in await store.read(task_ids[-1])] == newest
    assert (await store.get_task("running")).status == "running"  # type: ignore[union-attr]
    assert [event for _, event in await store.read("running")] == [Start("running", "m"), Text(0, "x" * 100_000)]
    await store.finish("running", DONE)  # finished, it is the newest, and alone over the cap: it goes at once
    assert await store.get_task("running") is None and store.finished_bytes <= store.max_bytes


async def test_the_embedded_store_counts_what_its_logs_hold_and_gives_it_back() -> None:
    store = MemoryStore(stream_ttl=60)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(200):
            await answered(store, f"{i:04}-0b6f4c5e-7d1a-4e2b-9c3d-5a6b7c8d9e0f")
        held, counted = tracemalloc.get_traced_memory()[0] - before, store.finished_bytes
        store.max_bytes = 1
        assert await store.get_task("0199-0b6f4c5e-7d1a-4e2b-9c3d-5a6b7c8d9e0f") is None
        left = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert counted / 200 <= 4096, "a finished 50-delta log takes at most 4 KiB"
    assert 0.85 < held / counted < 1.15, (held, counted)
    assert store.finished_bytes == 0 and left < held / 20, (left, held)


async def test_the_embedded_store_hands_what_it_dropped_back_to_the_os(monkeypatch: pytest.MonkeyPatch) -> None:
    trims: list[int] = []
    monkeypatch.setattr(memory, "_malloc_trim", trims.append)
    monkeypatch.setattr(memory, "TRIM_AFTER", 20_000)
    store = MemoryStore(stream_ttl=60, max_bytes=10_000)
    for i in range(20):
        await answered(store, f"t{i:02}")
    assert trims and set(trims) == {0} and len(trims) <= 60_000 // 20_000, "once in a while, not per log"
    trim = memory._glibc_malloc_trim()
    assert trim is None or trim(0) in (0, 1)


async def test_finished_redis_keys_get_the_stream_ttl(engine_url: str) -> None:
    store = RedisStore.from_url(engine_url, prefix="ttl:", stream_ttl=30)
    client = admin_client(engine_url)
    try:
        await started(store)
        assert await client.ttl("ttl:{t1}:events") > 3600, "a running task's keys outlive its generation"
        await store.finish("t1", DONE)
        assert 0 < await client.ttl("ttl:{t1}:events") <= 30
        assert 0 < await client.ttl("ttl:{t1}:task") <= 30
    finally:
        await client.aclose()
        await store.close()


async def test_redis_follow_across_replicas_and_after_the_writer_stops(engine_url: str) -> None:
    """B follows A's task through its XREAD; A's own follower gets it locally, then by XREAD once A's writer ends."""
    async with two_replicas(engine_url, "xrep:") as (a, b):
        await started(a)
        on_a, on_b = asyncio.create_task(collect(a, "t1")), asyncio.create_task(collect(b, "t1"))
        await asyncio.sleep(0.05)
        for piece in "xyz":
            await a.append("t1", [Text(0, piece)], owner="r1")
        await a.finish("t1", Error("upstream_error", "boom"))  # A's writer is done...
        # ...but had it not been, a reaper elsewhere could end the task: both must see it either way.
        await started(a, "t2")
        late_a = asyncio.create_task(collect(a, "t2"))
        await asyncio.sleep(0.05)
        await a.append("t2", [Text(0, "w")], owner="r1")
        a._fanout._local.discard("xrep:{t2}:events")  # as if A's writer were gone without finishing
        await a._fanout.local_end("xrep:{t2}:events")
        await b.finish("t2", DONE)
        expected = [Start("t1", "m"), Text(0, "x"), Text(0, "y"), Text(0, "z"), Error("upstream_error", "boom")]
        assert [e for _, e in await on_a] == expected
        assert [e for _, e in await on_b] == expected
        assert [e for _, e in await late_a] == [Start("t2", "m"), Text(0, "w"), DONE]


async def test_redis_a_task_created_started_is_followed_on_its_replica_and_another(engine_url: str) -> None:
    async with two_replicas(engine_url, "cstart:") as (a, b):
        first = Start("t1", "m")
        await a.create_task("t1", fingerprint="f", model="m", lease_seconds=5, owner="r1", first=first)
        on_a, on_b = asyncio.create_task(collect(a, "t1")), asyncio.create_task(collect(b, "t1"))
        await asyncio.sleep(0.05)
        for piece in "xy":
            await a.append("t1", [Text(0, piece)], owner="r1")
        await a.finish("t1", DONE)
        await a.release("t1")
        expected = [first, Text(0, "x"), Text(0, "y"), DONE]
        assert [e for _, e in await on_a] == expected
        assert [e for _, e in await on_b] == expected


async def test_redis_follower_drops_an_event_delivered_twice(engine_url: str) -> None:
    store = RedisStore.from_url(engine_url, prefix="dup:")
    await store.connect()
    try:
        await started(store)
        follower = asyncio.create_task(collect(store, "t1"))
        await asyncio.sleep(0.05)
        event_id = await store.append("t1", [Text(0, "x")], owner="r1")
        store._fanout.deliver("dup:{t1}:events", [(event_id, Text(0, "x"))])  # as its XREAD may, too
        await store.finish("t1", DONE)
        assert [e for _, e in await follower] == [Start("t1", "m"), Text(0, "x"), DONE]
    finally:
        await store.close()


async def test_no_event_follows_the_terminal_one(store: Store) -> None:
    await started(store)
    with pytest.raises(TaskEnded):
        await store.append("t1", [Text(0, "x")], owner="another-replica")
    assert await store.finish("t1", Error("interrupted", "reaped"))
    with pytest.raises(TaskEnded):
        await store.append("t1", [Text(0, "late")], owner="r1")
    assert [e for _, e in await store.read("t1")] == [Start("t1", "m"), Error("interrupted", "reaped")]


async def test_resuming_at_the_terminal_event_ends_at_once(store: Store) -> None:
    await started(store)
    await store.finish("t1", DONE)
    last_id = (await store.read("t1"))[-1][0]
    assert await collect(store, "t1", after=last_id) == []


async def test_the_last_event_id(store: Store) -> None:
    assert await store.last_event_id("nope") is None
    await store.create_task("t1", fingerprint="f", model="m", lease_seconds=5)
    assert await store.last_event_id("t1") is None, "queued: no event yet"
    first = await store.start_task("t1", owner="r1", lease_seconds=5, event=Start("t1", "m"))
    assert await store.last_event_id("t1") == first
    last = await store.append("t1", [Text(0, "a"), Text(0, "b")], owner="r1")
    assert await store.last_event_id("t1") == last
    await store.finish("t1", DONE)
    events = await store.read("t1")
    assert await store.last_event_id("t1") == events[-1][0] and events[-1][1] == DONE


async def test_embedded_ids_increase_when_the_clock_goes_back(monkeypatch: pytest.MonkeyPatch) -> None:
    store = MemoryStore()
    clock = iter([1000.0, 1000.0, 999.0, 1001.0, 1001.0, 1000.5])
    monkeypatch.setattr(memory, "time", SimpleNamespace(time=lambda: next(clock), monotonic=time.monotonic))
    await store.create_task("t1", fingerprint="f", model="m", lease_seconds=5)
    await store.start_task("t1", owner="r1", lease_seconds=5, event=Start("t1", "m"))
    await store.append("t1", [Text(0, str(i)) for i in range(5)], owner="r1")
    events = await store.read("t1")
    ids = [event_id for event_id, _ in events]
    assert ids == ["1000000-0", "1000000-1", "1000000-2", "1001000-0", "1001000-1", "1001000-2"]
    for i, event_id in enumerate(ids):
        assert await store.read("t1", after=event_id) == events[i + 1 :]
    assert await store.read("t1", after="1000000-7") == events[3:]
    assert await store.read("t1", after="999999-99") == events


async def test_a_queued_task_whose_replica_died_ends_interrupted(store: Store) -> None:
    await store.create_task("t1", fingerprint="f", model="m", lease_seconds=0.1)
    await asyncio.sleep(0.15)
    assert await store.interrupt_lapsed() == ["t1"]
    info = await store.get_task("t1")
    assert info is not None and info.status == "interrupted"


async def test_a_cancel_request_is_seen_at_renewal(store: Store) -> None:
    await started(store, "t1")
    await started(store, "t2")
    await store.request_cancel("t2")
    await store.request_cancel("never-existed")
    assert await store.renew_leases(["t1", "t2"], owner="r1", lease_seconds=5) == ["t2"]
    assert await store.get_task("never-existed") is None


async def test_a_task_created_again_on_another_replica_is_reaped_only_once_its_owner_stops(engine_url: str) -> None:
    """An equal request sent again to another replica finds the task (idempotent): that replica may have noted it
    where its reaper looks (a cluster notes it before CREATE), but the lease in the task's hash decides."""
    owner = RedisStore.from_url(engine_url, prefix="again:")
    other = RedisStore.from_url(engine_url, prefix="again:")
    try:
        # Leases of a second, renewed every 0.3 s: a loaded machine's stall cannot lapse one by accident.
        await owner.create_task("t1", fingerprint="f", model="m", lease_seconds=1.0)
        await owner.start_task("t1", owner="r1", lease_seconds=1.0, event=Start("t1", "m"))
        assert not (await other.create_task("t1", fingerprint="f", model="m", lease_seconds=1.0))[1]
        for _ in range(5):
            await asyncio.sleep(0.3)
            await owner.renew_leases(["t1"], owner="r1", lease_seconds=1.0)
            assert await other.interrupt_lapsed() == []
        await asyncio.sleep(1.2)
        assert await other.interrupt_lapsed() == ["t1"]
        assert await owner.interrupt_lapsed() == []
    finally:
        await owner.close()
        await other.close()


async def test_redis_a_follower_far_ahead_does_not_starve_the_others(engine_url: str) -> None:
    async with two_replicas(engine_url, "ahead:") as (writer, reader):
        await started(writer)
        ahead = reader.follow("t1", after="99999999999999-0", heartbeat=0.2)

        async def first_of_ahead() -> EventBatch:
            return await anext(ahead)

        ahead_task = asyncio.create_task(first_of_ahead())
        await asyncio.sleep(0.05)
        normal = asyncio.create_task(collect(reader, "t1"))
        await asyncio.sleep(0.05)
        await writer.append("t1", [Text(0, "a")], owner="r1")
        await writer.finish("t1", DONE)
        assert [e for _, e in await normal] == [Start("t1", "m"), Text(0, "a"), DONE]
        ahead_task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await ahead_task
        await aclose(ahead)


async def test_redis_live_reads_share_one_connection(redis_url: str) -> None:
    """Fifty followers of fifty remote tasks: a handful of connections, not one per follower."""
    import redis.asyncio as aioredis

    writer = RedisStore.from_url(redis_url, prefix="conns:")
    reader = RedisStore.from_url(redis_url, prefix="conns:", max_connections=4)
    await writer.connect()
    await reader.connect()
    admin = aioredis.Redis.from_url(redis_url)
    try:
        before = len(await admin.client_list())
        task_ids = [f"t{i}" for i in range(50)]
        for task_id in task_ids:
            await started(writer, task_id)
        followers = [asyncio.create_task(collect(reader, task_id)) for task_id in task_ids]
        await asyncio.sleep(0.2)
        during = len(await admin.client_list())
        for task_id in task_ids:
            await writer.append(task_id, [Text(0, task_id)], owner="r1")
            await writer.finish(task_id, DONE)
        results = await asyncio.gather(*followers)
    finally:
        await admin.aclose()
        await writer.close()
        await reader.close()
    got = {task_id: [e for _, e in events] for task_id, events in zip(task_ids, results, strict=True)}
    assert got == {task_id: [Start(task_id, "m"), Text(0, task_id), DONE] for task_id in task_ids}
    # The reader's pool (4), its XREAD connection and its wake; the writer's few.
    assert during - before <= 10, f"{during - before} connections for 50 live followers"


async def test_redis_a_follower_ahead_of_a_lagging_reader_still_gets_the_end(engine_url: str) -> None:
    """The task ends while this replica's XREAD has not delivered its last events: the heartbeat reads them."""
    async with two_replicas(engine_url, "lag:") as (writer, reader):
        await started(writer)
        await reader._fanout.stop()  # a reader that lags behind for good
        follower = asyncio.create_task(collect(reader, "t1"))
        await asyncio.sleep(0.05)
        await writer.append("t1", [Text(0, "a")], owner="r1")
        await writer.finish("t1", DONE)
        assert [e for _, e in await follower] == [Start("t1", "m"), Text(0, "a"), DONE]


async def test_redis_a_replicas_wake_stream_expires_unless_woken_and_goes_at_close(redis_url: str) -> None:
    import redis.asyncio as aioredis

    from llm_gateway.store.redis_fanout import WAKE_TTL

    writer = RedisStore.from_url(redis_url, prefix="wake-ttl:")
    reader = RedisStore.from_url(redis_url, prefix="wake-ttl:")
    await writer.connect()
    await reader.connect()
    admin = aioredis.Redis.from_url(redis_url)
    wake_key = reader._fanout._wake_key
    try:
        for task_id in ("t1", "t2"):
            await started(writer, task_id)
        first = reader.follow("t1", heartbeat=0.2)
        assert await anext(first)  # following a task of another replica wakes this replica's reader
        assert 0 < await admin.ttl(wake_key) <= WAKE_TTL, "a replica that dies now leaves a key that expires"
        await admin.expire(wake_key, 5)
        second = reader.follow("t2", heartbeat=0.2)
        assert await anext(second)
        assert await admin.ttl(wake_key) > 5, "each wake-up gives it its whole TTL again"
        await aclose(first)
        await aclose(second)
    finally:
        await writer.close()
        await reader.close()
        gone = await admin.exists(wake_key)
        await admin.aclose()
    assert gone == 0, "a replica that closes takes its wake stream with it"


async def test_values_with_a_ttl(store: Store) -> None:
    assert await store.get_value("k") is None
    await store.set_value("k", b"v1", ttl=0.2)
    assert await store.get_value("k") == b"v1"
    assert not await store.set_value_if_absent("k", b"v2", ttl=5)
    assert await store.refresh_value("k", b"v1", ttl=5) and not await store.refresh_value("k", b"other", ttl=5)
    await store.delete_value("k", if_equals=b"other")
    assert await store.get_value("k") == b"v1"
    await store.delete_value("k", if_equals=b"v1")
    assert await store.set_value_if_absent("k", b"v3", ttl=0.1)
    await asyncio.sleep(0.15)
    assert await store.get_value("k") is None, "expired"
    assert await store.set_value_if_absent("k", b"v4", ttl=5)


async def test_redis_follower_ends_unavailable_when_its_log_is_lost(engine_url: str) -> None:
    """The store came back without the task (restarted empty): its follower ends with the error frame's event, at
    the last id it had, never silently."""
    store = RedisStore.from_url(engine_url, prefix="lost:")
    client = admin_client(engine_url)
    await store.connect()
    try:
        await started(store)
        last = await store.append("t1", [Text(0, "a")], owner="r1")
        follower = asyncio.create_task(collect(store, "t1"))
        await asyncio.sleep(0.05)
        await client.delete(store._keys.task("t1"), store._keys.events("t1"))
        assert await follower == [(ANY, Start("t1", "m")), (last, Text(0, "a")), (last, UNAVAILABLE)]
    finally:
        await client.aclose()
        await store.close()


async def test_redis_local_followers_get_the_terminal_event_the_store_did_not_take(engine_url: str) -> None:
    store = RedisStore.from_url(engine_url, prefix="abandon:")
    await store.connect()
    try:
        await started(store)
        last = await store.append("t1", [Text(0, "a")], owner="r1")
        follower = asyncio.create_task(collect(store, "t1"))
        await asyncio.sleep(0.05)
        store.abandon("t1", UNAVAILABLE)  # the owner gave up writing it
        assert await follower == [(ANY, Start("t1", "m")), (last, Text(0, "a")), (last, UNAVAILABLE)]
        assert (await store.get_task("t1")).status == "running"  # type: ignore[union-attr]
    finally:
        await store.close()


async def test_redis_a_create_tried_again_after_its_answer_was_lost_answers_as_the_first(engine_url: str) -> None:
    """A command whose connection is lost after it was written is sent again (store/redis_lean.py, redis-py's
    pool): CREATE's second try must answer "created", or the replica would take its own new task for someone
    else's and nobody would generate it. Another call creating the same task still gets the existing one."""
    from llm_gateway.events import encode_event
    from llm_gateway.store.redis import ACTIVE_TTL

    store = RedisStore.from_url(engine_url, prefix=f"retry:{time.monotonic_ns()}:")
    try:
        keys = [store._keys.task("t1"), store._keys.events("t1"), *store._inline(store._index)]
        args: list[str | bytes | int] = ["t1", "f", "m", "2026-01-01T00:00:00Z", ACTIVE_TTL, 5000, "r1"]
        first_try = [*args, encode_event(Start("t1", "m")), "attempt-1"]
        created = await store._script(store._lua.create, keys, first_try)
        again = await store._script(store._lua.create, keys, first_try)
        other = await store._script(store._lua.create, keys, [*first_try[:-1], "attempt-2"])
        assert isinstance(created, bytes) and again == created, "the event id of its Start, both times"
        assert isinstance(other, list), "another call: the existing task's hash"
        assert [e for _, e in await store.read("t1")] == [Start("t1", "m")], "one Start, not two"
    finally:
        await store.close()


async def test_redis_followers_on_the_writing_replica_start_from_what_it_wrote(redis_url: str) -> None:
    """A task this replica writes: its followers here start from the events its writer stored (no read of the
    log, one round trip less per stream), from any resume point, and miss nothing written after."""
    import redis.asyncio as aioredis

    store = RedisStore.from_url(redis_url, prefix=f"hist:{time.monotonic_ns()}:")
    admin = aioredis.Redis.from_url(redis_url)

    async def scripts_run() -> int:
        stats = await admin.info("commandstats")
        return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))

    await store.connect()
    try:
        start = Start("t1", "m")
        await store.create_task("t1", fingerprint="f", model="m", lease_seconds=5, owner="r1", first=start)
        ids = [await store.append("t1", [Text(0, piece)], owner="r1") for piece in "abc"]
        before = await scripts_run()
        followers = [asyncio.create_task(collect(store, "t1", after)) for after in (None, ids[0], ids[2])]
        await asyncio.sleep(0.05)
        looked = await scripts_run() - before
        await store.append("t1", [Text(0, "d")], owner="r1")
        await store.finish("t1", DONE)
        whole, after_a, after_c = [[event for _, event in await follower] for follower in followers]
    finally:
        await admin.aclose()
        await store.close()
    assert looked == 0, "the followers read the log"
    assert whole == [start, Text(0, "a"), Text(0, "b"), Text(0, "c"), Text(0, "d"), DONE]
    assert after_a == whole[2:] and after_c == whole[4:]
