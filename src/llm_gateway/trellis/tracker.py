"""PiAPI Trellis (image to 3D): one poller per task for the whole cluster, and what the routes ask of it.

Each Trellis task has an event log in the store (id ``trellis:<PiAPI task id>``, the same mechanism as Claude
tasks) holding its ``progress`` events, ended by ``complete`` or ``error``. Whoever watches it, on any replica,
follows that log. The polling happens once per task for the whole cluster: every replica's ``TrellisTracker``
offers to poll the tasks the cluster tracks (created here) or that its own sockets watch, and a lease in the store
(a ``Lease``, renewed while it polls) lets exactly one of them do it. If that replica dies, its lease
lapses and another takes over. A poller stops at a terminal status, after TRELLIS_MAX_WAIT (``error``), or
when the task is neither tracked nor watched anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import datetime
from typing import Any

from .. import keys
from ..aio import cancel_and_wait
from ..errors import GatewayError
from ..events import Complete, Error, Event, Progress, Start, TokenUsage
from ..lease import Lease
from ..locks import held
from ..store import EventBatch, Store, TaskEnded, quiet_level
from ..tenants import ANONYMOUS
from .client import PiAPIClient, is_piapi_id
from .status import PENDING, ends, is_final, to_progress

log = logging.getLogger(__name__)

OWNER = "trellis"  # every replica's pollers write as this owner; the poller lease says which one may
TRACKED = keys.TRELLIS_TRACKED


def log_id(piapi_task_id: str) -> str:
    return keys.trellis_log(piapi_task_id)


class TrellisTracker:
    def __init__(self, store: Store, client: PiAPIClient, *, interval: float, max_wait: float, replica_id: str) -> None:
        self.store = store
        self.client = client
        self.interval = interval
        self.max_wait = max_wait
        self.replica_id = replica_id
        self._pollers: dict[str, asyncio.Task[None]] = {}
        self._watchers: dict[str, int] = {}
        self._loop: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False

    @property
    def lease_seconds(self) -> float:
        return max(3 * self.interval, 3.0)

    @property
    def watched_seconds(self) -> float:
        """How long a task counts as watched after its last watcher here left ("for a while")."""
        return max(10 * self.interval, 2.0)

    async def start(self) -> None:
        self._loop = asyncio.create_task(self._offer_loop(), name="trellis-tracker")

    async def stop(self) -> None:
        # The offer loop first: it starts the pollers, so none starts after they are cancelled. The flag ends
        # the loops even where a cancellation was swallowed on the way (see aio.raise_if_cancelling).
        self._stopping = True
        await cancel_and_wait(self._loop)
        await cancel_and_wait(*self._pollers.values())

    # --- entry points for the routes -------------------------------------------------------------------

    async def create(self, body: bytes, tenant: str = ANONYMOUS) -> tuple[int, Any]:
        """Forward a create-task body to PiAPI unchanged, and track the task it creates for ``tenant``; PiAPI's
        status and answer."""
        status, answer = await self.client.create(body)
        task = answer.get("data") if isinstance(answer, dict) else None
        if status == 200 and isinstance(task, dict) and is_piapi_id(task_id := str(task.get("task_id", ""))):
            owner_ttl = self.max_wait + 86_400  # outlives the task's log
            await self.store.set_value(keys.trellis_owner(task_id), tenant.encode(), ttl=owner_ttl)
            await self._track(task)
        return status, answer

    async def known(self, task_id: str, tenant: str = ANONYMOUS) -> bool:
        """True once the task has a log and is ``tenant``'s; an unknown id is asked of PiAPI once (not hung on).

        A tenant sees only the tasks it created here; PiAPI is asked about other ids only without tenants.
        """
        owner = await self.store.get_value(keys.trellis_owner(task_id))
        if (owner or b"").decode() != tenant:
            return False
        if await self.store.get_task(log_id(task_id)) is not None:
            return True
        data = await self.client.get(task_id)
        if data is None:
            return False
        await self._ensure_log(task_id, data)
        await self._record(task_id, to_progress(data))
        return True

    async def status(self, task_id: str) -> Progress:
        """The task's latest status in its log (``PENDING`` before its first)."""
        found = latest(await self.store.read(log_id(task_id)))
        return found[1] if found else PENDING

    async def updates(self, task_id: str) -> AsyncGenerator[Event, None]:
        """The task's latest status at once (``PENDING`` before its first), then each later event of its log,
        up to a final status or the log's end."""
        events = await self.store.read(log_id(task_id))
        found = latest(events)
        if found is None:
            yield PENDING
            after = events[-1][0] if events else None
        else:
            after, update = found
            yield update
            if is_final(update):
                return
        async for batch in self.store.follow(log_id(task_id), after):
            for _, event in batch:
                yield event
                if ends(event):
                    return

    @contextlib.asynccontextmanager
    async def watching(self, task_id: str) -> AsyncIterator[None]:
        """While a socket here watches the task, this replica offers to poll it."""
        self._watchers[task_id] = self._watchers.get(task_id, 0) + 1
        self._wake.set()
        try:
            yield
        finally:
            self._watchers[task_id] -= 1
            if not self._watchers[task_id]:
                del self._watchers[task_id]

    async def publish(self, data: dict[str, Any]) -> None:
        """A status from PiAPI's webhook: into the log at once."""
        task_id = str(data.get("task_id", ""))
        await self._ensure_log(task_id, data)
        await self._record(task_id, to_progress(data))

    # --- the polling ---------------------------------------------------------------------------------------

    async def _offer_loop(self) -> None:
        while not self._stopping:
            try:
                await self._offer()
            except Exception as exc:  # the store may be down for a while: keep offering
                log.log(quiet_level(exc), "trellis tracker: %s", type(exc).__name__)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval / 2):
                    await self._wake.wait()

    async def _offer(self) -> None:
        for task_id in list(self._watchers):  # sockets come and go while we await
            await self.store.set_value(keys.trellis_watched(task_id), b"1", ttl=self.watched_seconds)
        candidates = (await self.store.members(TRACKED)) | set(self._watchers)
        for task_id in candidates - set(self._pollers):
            lease = Lease(
                self.store, keys.trellis_poller(task_id), ttl=self.lease_seconds, token=self.replica_id.encode()
            )
            if not self._stopping and await lease.take():
                self._pollers[task_id] = asyncio.create_task(self._poll(task_id, lease), name=f"trellis-poll-{task_id}")

    async def _poll(self, task_id: str, lease: Lease) -> None:
        """Poll while this replica holds the task's lease, renewed by the lease's own task so that neither a slow
        PiAPI nor a long backoff lets it lapse while we still poll."""
        try:
            async with lease:
                await self._poll_held(task_id, lease)
        except Exception as exc:  # the store is unwell: stop; the offer loop starts a poller again later
            log.log(quiet_level(exc), "trellis poller of %s stopped: %s", task_id, type(exc).__name__)
        finally:
            self._pollers.pop(task_id, None)

    async def _poll_held(self, task_id: str, lease: Lease) -> None:
        delay = self.interval
        while not (lease.lost or self._stopping):
            info = await self.store.get_task(log_id(task_id))
            if info is not None and info.finished:
                break
            if info is not None and _age(info.created_at) > self.max_wait:
                await self._give_up(task_id, f"gave up after TRELLIS_MAX_WAIT ({self.max_wait:.0f}s)")
                break
            try:
                data = await self.client.get(task_id)
                delay = self.interval
            except GatewayError as exc:
                delay = min(delay * 2, 60.0)  # back off while PiAPI is unwell
                log.warning("trellis poll of %s failed (%s); next in %.1fs", task_id, exc.type, delay)
            else:
                if lease.lost:
                    break  # the lease was lost meanwhile: another replica polls now
                if data is None:
                    await self._give_up(task_id, "PiAPI does not know this task")
                    break
                await self._ensure_log(task_id, data)
                if await self._record(task_id, to_progress(data)):
                    break
                if not await self._wanted(task_id):
                    break  # nobody tracks or watches it any more
            await asyncio.sleep(delay * random.uniform(0.9, 1.1))

    async def _wanted(self, task_id: str) -> bool:
        if task_id in self._watchers or task_id in await self.store.members(TRACKED):
            return True
        return await self.store.get_value(keys.trellis_watched(task_id)) is not None

    async def _track(self, data: dict[str, Any]) -> None:
        """A task we created: log its first status, and poll it until it ends, from whichever replica can."""
        task_id = str(data.get("task_id", ""))
        if not task_id:
            return
        await self._ensure_log(task_id, data)
        await self.store.add_member(TRACKED, task_id)
        self._wake.set()

    async def _ensure_log(self, task_id: str, data: dict[str, Any]) -> None:
        model = str(data.get("model") or "trellis")
        first = Start(log_id(task_id), model)
        _, created = await self.store.create_task(
            log_id(task_id), fingerprint="", model=model, lease_seconds=None, owner=OWNER, first=first
        )
        if created:
            # Any replica may write this log (whichever polls, or gets the webhook): followers here must read
            # it from the store, not only what this replica writes.
            await self.store.release(log_id(task_id))

    async def _record(self, task_id: str, update: Progress) -> bool:
        """Append the update if it changed anything; True once the task has ended.

        Serialised per task across replicas: the poller, a webhook (PiAPI may repeat them) and a first lookup
        may all report the same status at once, and it must be written once.
        """
        async with held(self.store, keys.trellis_record(task_id), ttl=5.0, wait=15.0):
            return await self._record_held(task_id, update)

    async def _record_held(self, task_id: str, update: Progress) -> bool:
        events = await self.store.read(log_id(task_id))
        found = latest(events)
        last = found[1] if found else None
        ended = any(isinstance(e, Complete | Error) for _, e in events[-1:])
        if ended:
            return True
        if last is None or (last.status, last.message, last.data) != (update.status, update.message, update.data):
            try:
                await self.store.append(log_id(task_id), [update], owner=OWNER)
            except TaskEnded:
                return True
        if not is_final(update):
            return False
        terminal: Complete | Error
        if update.status == "completed":
            terminal = Complete(update.data or "", "completed", TokenUsage(), "trellis")
        else:
            terminal = Error("upstream_error", update.message)
        await self.store.finish(log_id(task_id), terminal)
        await self.store.remove_member(TRACKED, task_id)
        return True

    async def _give_up(self, task_id: str, message: str) -> None:
        with contextlib.suppress(TaskEnded):
            await self.store.append(log_id(task_id), [Progress("error", message)], owner=OWNER)
        await self.store.finish(log_id(task_id), Error("upstream_timeout", message))
        await self.store.remove_member(TRACKED, task_id)


def _age(created_at: str) -> float:
    return time.time() - datetime.fromisoformat(created_at.replace("Z", "+00:00")).timestamp()


def latest(events: EventBatch) -> tuple[str, Progress] | None:
    """The last status in a log, with its event id."""
    return next(((i, e) for i, e in reversed(events) if isinstance(e, Progress)), None)
