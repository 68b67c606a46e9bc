"""A lock shared by every replica on the store, held for as long as the work takes.

Taken with ``set_value_if_absent`` and renewed every third of its ttl by a task the lock owns, so a replica
that dies releases it within one ttl; released only by its holder (``delete_value(if_equals=token)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator

from .aio import cancel_and_wait
from .errors import Conflict
from .store import Values

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def held(store: Values, key: str, *, ttl: float = 15.0, wait: float = 120.0) -> AsyncIterator[None]:
    """Hold ``key`` (waiting up to ``wait`` seconds for it); Conflict if it stays taken."""
    token = uuid.uuid4().hex.encode()
    delay = 0.01
    async with asyncio.timeout(wait) as deadline:
        try:
            while not await store.set_value_if_absent(key, token, ttl=ttl):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.25)
        except TimeoutError:
            if deadline.expired():
                raise Conflict(f"{key} is busy; try again later") from None
            raise
    renewer = asyncio.create_task(_renew(store, key, token, ttl), name=f"lock-{key}")
    try:
        yield
    finally:
        await cancel_and_wait(renewer)
        try:
            async with asyncio.timeout(5):
                await store.delete_value(key, if_equals=token)
        except Exception as exc:  # it expires by itself within one ttl
            log.warning("could not release lock %s: %s", key, type(exc).__name__)


async def _renew(store: Values, key: str, token: bytes, ttl: float) -> None:
    while True:
        await asyncio.sleep(ttl / 3)
        try:
            async with asyncio.timeout(ttl / 3):
                if not await store.refresh_value(key, token, ttl=ttl):
                    log.warning("lock %s was lost (expired while held)", key)
                    return
        except Exception as exc:
            log.warning("could not renew lock %s: %s", key, type(exc).__name__)
