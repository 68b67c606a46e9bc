"""A key in the store held by one holder, for as long as the work takes, on every replica's word.

Taken with ``set_value_if_absent`` and renewed every third of its ttl by a task the lease owns, so a holder
that dies gives it up within one ttl; released only by its holder (``delete_value(if_equals=token)``).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from types import TracebackType

from .aio import cancel_and_wait
from .store import Store, quiet_level

log = logging.getLogger(__name__)

RELEASE_SECONDS = 5.0


class Lease:
    """``take`` (or ``take_within``) the key, then ``async with`` the lease while holding it: renewed inside,
    released on exit. ``lost`` turns True if it expired while held (someone else may hold it now)."""

    def __init__(self, store: Store, key: str, *, ttl: float, token: bytes | None = None) -> None:
        self.store = store
        self.key = key
        self.ttl = ttl
        self.token = token or uuid.uuid4().hex.encode()
        self.lost = False
        self._renewer: asyncio.Task[None] | None = None

    async def take(self) -> bool:
        """One try: True if the key was free, and is ours now."""
        return await self.store.set_value_if_absent(self.key, self.token, ttl=self.ttl)

    async def take_within(self, wait: float) -> bool:
        """Take the key, trying again until it is free; False if it stays taken for ``wait`` seconds."""
        delay = 0.01
        deadline = asyncio.timeout(wait)
        try:
            # The TimeoutError comes out of the ``async with``, not from inside it.
            async with deadline:
                while not await self.take():
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.25)
        except TimeoutError:
            if deadline.expired():
                return False
            raise
        return True

    async def __aenter__(self) -> Lease:
        self._renewer = asyncio.create_task(self._renew(), name=f"lease-{self.key}")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await cancel_and_wait(self._renewer)
        self._renewer = None
        try:
            async with asyncio.timeout(RELEASE_SECONDS):
                await self.store.delete_value(self.key, if_equals=self.token)
        except Exception as error:  # it expires by itself within one ttl
            log.log(quiet_level(error), "could not release lease %s: %s", self.key, type(error).__name__)

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                async with asyncio.timeout(self.ttl / 3):
                    if not await self.store.refresh_value(self.key, self.token, ttl=self.ttl):
                        self.lost = True
                        log.warning("lease %s was lost (expired while held)", self.key)
                        return
            except Exception as error:  # the store may be unwell for a moment: try again next time
                log.log(quiet_level(error), "could not renew lease %s: %s", self.key, type(error).__name__)
