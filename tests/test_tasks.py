"""The task runner against a real Redis and the emulator (through the SDK)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence

import pytest

from llm_gateway.content import user
from llm_gateway.errors import GatewayError, StoreUnavailable
from llm_gateway.events import Complete, Error, Event, Start, Text
from llm_gateway.providers import GenerationRequest
from llm_gateway.providers.registry import Providers
from llm_gateway.store.memory import MemoryStore
from llm_gateway.store.redis import RedisStore
from llm_gateway.tasks import LogWriter, TaskRunner
from tests.conftest import Emulator, gateway_settings


@pytest.fixture
async def runner(redis_url: str, emulator: Emulator) -> AsyncIterator[TaskRunner]:
    prefix = f"run:{uuid.uuid4().hex[:8]}:"
    providers = Providers.from_settings(gateway_settings(emulator.url))
    store = RedisStore.from_url(redis_url, prefix=prefix)
    await store.connect()
    task_runner = TaskRunner(store, providers.resolve, lease_seconds=1.0, grace_seconds=0.5)
    await task_runner.start()
    try:
        yield task_runner
    finally:
        await task_runner.shutdown()
        await providers.close()
        await store.close()


def request(prompt: str) -> GenerationRequest:
    return GenerationRequest(model="claude-sonnet-4-6", messages=[user(prompt)])


async def until_running(runner: TaskRunner, task_id: str) -> None:
    async with asyncio.timeout(5):
        while not (info := await runner.store.get_task(task_id)) or info.status != "running":
            await asyncio.sleep(0.01)


async def test_a_second_cancel_while_finishing_does_not_lose_the_terminal_event(runner: TaskRunner) -> None:
    info, _ = await runner.submit(None, request("slow [emu:deltas=500] [emu:delay_ms=10]"))
    await until_running(runner, info.task_id)
    await runner.cancel(info.task_id)
    await asyncio.sleep(0)  # the generation takes the cancel and starts writing its terminal event...
    # ...when a second request lands, as the cancel listener or a lease renewal would deliver it.
    runner._cancel_local(info.task_id, "cancelled")
    async with asyncio.timeout(5):
        terminal = await runner.wait(info.task_id)
    final = await runner.store.get_task(info.task_id)
    assert isinstance(terminal, Error) and terminal.type == "cancelled"
    assert final is not None and final.status == "cancelled"


async def test_a_submitted_task_is_running_with_its_start_at_once(runner: TaskRunner) -> None:
    """Created and started in one step, in the request: a cancel that comes at once ends it like any running task."""
    info, created = await runner.submit(None, request("slow [emu:deltas=500] [emu:delay_ms=10]"), message_id="m-1")
    assert created and info.status == "running" and info.owner == runner.replica_id
    start = (await runner.store.read(info.task_id))[0][1]
    assert isinstance(start, Start) and start.message_id == "m-1"
    await runner.cancel(info.task_id)
    async with asyncio.timeout(5):
        terminal = await runner.wait(info.task_id)
    assert isinstance(terminal, Error) and terminal.type == "cancelled"
    assert (await runner.store.get_task(info.task_id)).status == "cancelled"  # type: ignore[union-attr]


async def test_a_task_ended_elsewhere_stops_generating(runner: TaskRunner, redis_url: str) -> None:
    info, _ = await runner.submit(None, request("long [emu:deltas=500] [emu:delay_ms=10]"))
    await until_running(runner, info.task_id)
    prefix = runner.store._prefix  # type: ignore[attr-defined]
    reaper = RedisStore.from_url(redis_url, prefix=prefix)
    try:
        follower = asyncio.create_task(runner.wait(info.task_id))  # a follower on the owner's replica
        await asyncio.sleep(0.1)
        assert await reaper.finish(info.task_id, Error("interrupted", "reaped by another replica"))
        async with asyncio.timeout(5):
            terminal = await follower
        assert isinstance(terminal, Error) and terminal.type == "interrupted"
        async with asyncio.timeout(5):
            while runner.running_count:
                await asyncio.sleep(0.02)
        events = [event for _, event in await reaper.read(info.task_id)]
    finally:
        await reaper.close()
    assert isinstance(events[-1], Error), "nothing after the terminal event"
    assert sum(isinstance(e, Complete | Error) for e in events) == 1
    assert any(isinstance(e, Text) for e in events)


async def test_the_grace_runs_from_the_drain_and_shutdown_waits_only_for_what_is_left(runner: TaskRunner) -> None:
    info, _ = await runner.submit(None, request("slow [emu:deltas=500] [emu:delay_ms=10]"))
    await until_running(runner, info.task_id)
    draining = runner.drain()
    assert runner.drain() is draining
    with pytest.raises(GatewayError) as refused:
        await runner.submit(None, request("too late"))
    async with asyncio.timeout(5):
        terminal = await runner.wait(info.task_id)
        await asyncio.wait({draining})
    started = asyncio.get_running_loop().time()
    await runner.shutdown()
    assert refused.value.type == "unavailable" and refused.value.retry_after == 1
    assert isinstance(terminal, Error) and terminal.type == "interrupted"
    assert asyncio.get_running_loop().time() - started < 0.2


async def test_the_end_hook_runs_once_the_terminal_event_is_stored(runner: TaskRunner) -> None:
    seen: list[str | None] = []

    async def on_end() -> None:
        info = await runner.store.get_task(task_id)
        seen.append(info.status if info else None)
        raise RuntimeError("a failing hook is logged, not the task's business")

    info, _ = await runner.submit(None, request("hooked [emu:deltas=3]"), message_id="m-1", on_end=on_end)
    task_id = info.task_id
    async with asyncio.timeout(5):
        while runner.running_count:
            await asyncio.sleep(0.01)
    start = (await runner.store.read(task_id))[0][1]
    assert seen == ["completed"]
    assert isinstance(start, Start) and start.message_id == "m-1"


class LosingStore(MemoryStore):
    """Its next ``lose`` appends are written, but answered with StoreUnavailable, as if the reply was lost."""

    in_process = False  # its appends can fail, as a remote store's do: the writer must go through its retries

    def __init__(self, lose: int) -> None:
        super().__init__()
        self.lose = lose

    async def append(self, task_id: str, events: Sequence[Event], *, owner: str, offset: int | None = None) -> str:
        last = await super().append(task_id, events, owner=owner, offset=offset)
        if self.lose:
            self.lose -= 1
            raise StoreUnavailable("ConnectionError")
        return last


async def test_the_writer_tries_again_and_writes_each_event_once() -> None:
    store = LosingStore(lose=3)
    await store.create_task("t1", fingerprint="f", model="m", lease_seconds=5)
    await store.start_task("t1", owner="r1", lease_seconds=5, event=Start("t1", "m"))
    writer = LogWriter(store, "t1", "r1", grace=5)
    for piece in "abcde":
        await writer.write(Text(0, piece))
        await asyncio.sleep(0.01)
    async with asyncio.timeout(5):
        await writer.drain()
    assert store.lose == 0
    assert [e for _, e in await store.read("t1")] == [Start("t1", "m"), *(Text(0, piece) for piece in "abcde")]


async def test_the_writer_gives_up_when_the_store_fails_past_the_grace() -> None:
    store = LosingStore(lose=10**6)
    await store.create_task("t1", fingerprint="f", model="m", lease_seconds=5)
    await store.start_task("t1", owner="r1", lease_seconds=5, event=Start("t1", "m"))
    writer = LogWriter(store, "t1", "r1", grace=0.3)
    await writer.write(Text(0, "a"))
    async with asyncio.timeout(2):
        with pytest.raises(StoreUnavailable):
            await writer.drain()
    with pytest.raises(StoreUnavailable):
        await writer.write(Text(0, "b"))  # nothing more is written once a gap is possible
