"""A lock shared by every replica on the store, held for as long as the work takes (a ``Lease`` waited for)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from .errors import Conflict
from .lease import Lease
from .store import Store


@contextlib.asynccontextmanager
async def held(store: Store, key: str, *, ttl: float = 15.0, wait: float = 120.0) -> AsyncIterator[None]:
    """Hold ``key`` (waiting up to ``wait`` seconds for it); Conflict if it stays taken."""
    lease = Lease(store, key, ttl=ttl)
    if not await lease.take_within(wait):
        raise Conflict(f"{key} is busy; try again later")
    async with lease:
        yield
