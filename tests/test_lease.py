"""The renewing lease under the lock and the Trellis poller, on both store backends."""

from __future__ import annotations

import asyncio

from llm_gateway.lease import Lease
from llm_gateway.store import Store


async def test_a_lease_is_renewed_while_held_and_released_on_exit(store: Store) -> None:
    lease = Lease(store, "poller", ttl=0.15, token=b"r1")
    assert await lease.take()
    assert not await Lease(store, "poller", ttl=5).take(), "taken"
    async with lease:
        await asyncio.sleep(0.4)  # well past the ttl: renewal keeps it
        assert await store.get_value("poller") == b"r1" and not lease.lost
    assert await store.get_value("poller") is None, "released"


async def test_a_lease_taken_over_meanwhile_is_lost_and_left_to_its_new_holder(store: Store) -> None:
    lease = Lease(store, "poller", ttl=0.15, token=b"r1")
    assert await lease.take()
    async with lease:
        await store.delete_value("poller")
        assert await store.set_value_if_absent("poller", b"r2", ttl=5)
        async with asyncio.timeout(2):
            while not lease.lost:
                await asyncio.sleep(0.02)
    assert await store.get_value("poller") == b"r2", "not released by the one that lost it"


async def test_waiting_for_a_lease_gives_up_after_wait(store: Store) -> None:
    assert await store.set_value_if_absent("poller", b"r2", ttl=0.3)
    assert not await Lease(store, "poller", ttl=5).take_within(0.1)
    assert await Lease(store, "poller", ttl=5).take_within(2), "free once the other one expired"
