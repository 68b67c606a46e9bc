"""The lock every replica shares, on both store backends."""

from __future__ import annotations

import asyncio

import pytest

from llm_gateway.errors import Conflict
from llm_gateway.locks import held
from llm_gateway.store import Store


async def test_a_lock_that_stays_taken_for_wait_seconds_is_a_conflict(store: Store) -> None:
    async with held(store, "conv", ttl=5, wait=5):
        started = asyncio.get_running_loop().time()
        with pytest.raises(Conflict) as raised:
            async with held(store, "conv", ttl=5, wait=0.2):
                pytest.fail("took a lock that was held")
        waited = asyncio.get_running_loop().time() - started
    assert raised.value.status == 409 and raised.value.type == "conflict"
    assert 0.2 <= waited < 2, "waited its time, no longer"
    async with held(store, "conv", ttl=5, wait=0.2):
        pass  # released by its holder, and not taken by the one that gave up


async def test_a_lock_serialises_holders_and_outlives_its_ttl(store: Store) -> None:
    order: list[str] = []

    async def hold(name: str) -> None:
        async with held(store, "conv", ttl=0.15, wait=5):
            order.append(f"{name}+")
            await asyncio.sleep(0.3)  # twice the ttl: renewal keeps it
            order.append(f"{name}-")

    await asyncio.gather(hold("a"), hold("b"))
    assert order in (["a+", "a-", "b+", "b-"], ["b+", "b-", "a+", "a-"])
    assert await store.get_value("conv") is None, "released"
