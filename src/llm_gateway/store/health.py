"""Whether the store answers, as this replica sees it: one prober, one log line per change.

Everything else that fails while the store is out (a background loop, a release, a renewal) logs quietly, at
``quiet_level``: the outage itself is told once, here, with how long it lasted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from ..aio import cancel_and_wait
from ..errors import StoreUnavailable
from ..metrics import STORE_OUTAGE

log = logging.getLogger("llm_gateway.store")

PROBE_SECONDS = 1.0


def quiet_level(exc: BaseException) -> int:
    """DEBUG for a store that did not answer (its outage is logged once, by StoreHealth), else WARNING."""
    return logging.DEBUG if isinstance(exc, StoreUnavailable | TimeoutError) else logging.WARNING


class StoreHealth:
    """Pings the store every ``interval`` seconds (each ping bounded by as much); ``silent_for`` says how long
    it has not answered, and ``on_change`` is called when it stops or starts answering again. Every command the
    store answers says so too (``answered``), so the first answer after an outage ends it at once."""

    def __init__(
        self, ping: Callable[[], Awaitable[object]], on_change: Callable[[], None], *, interval: float = PROBE_SECONDS
    ) -> None:
        self._ping = ping
        self._on_change = on_change
        self._interval = interval
        self._answered_at = time.monotonic()
        self._down_since: float | None = None
        self._task: asyncio.Task[None] | None = None

    def silent_for(self) -> float | None:
        """Seconds since the store last answered, while it is down; None while it answers."""
        return None if self._down_since is None else time.monotonic() - self._down_since

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._probe(), name="store-health")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    def answered(self) -> None:
        """The store answered a command: it is up (whatever the probe last saw)."""
        self._answered_at = time.monotonic()
        if self._down_since is not None:
            outage = self._answered_at - self._down_since
            log.warning("store back after %.1fs", outage)
            STORE_OUTAGE.inc(outage)
            self._down_since = None
            self._on_change()

    async def _probe(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self._interval):
                    await self._ping()
            except Exception as exc:
                self._failed(exc)
            else:
                self.answered()
            await asyncio.sleep(self._interval)

    def _failed(self, exc: Exception) -> None:
        if self._down_since is None:
            self._down_since = self._answered_at  # silent since its last answer, not since we noticed
            cause = exc.cause if isinstance(exc, StoreUnavailable) else type(exc).__name__
            log.error("store down: %s", cause)
            self._on_change()
