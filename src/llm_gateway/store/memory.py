"""The embedded store: everything in this process's memory, for a single replica."""

from __future__ import annotations

import asyncio
import bisect
import collections
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence

from ..events import Error, Event, TaskInfo
from .base import (
    Ending,
    EventBatch,
    EventKey,
    LogRules,
    format_event_id,
    may_append,
    may_finish,
    may_start,
    next_event_id,
)


class _Log:
    __slots__ = ("appended", "cancel_requested", "changed", "events", "info", "keys", "lease_deadline")

    def __init__(self, info: TaskInfo, lease: int) -> None:
        self.info = info
        self.keys: list[EventKey] = []
        self.events: EventBatch = []
        self.changed = asyncio.Event()
        self.lease_deadline = _deadline(lease)
        self.cancel_requested = False
        self.appended = 0  # events its owner appended (``offset`` of ``append``)

    def add(self, event: Event) -> str:
        key = next_event_id(self.keys[-1] if self.keys else (0, 0))
        event_id = format_event_id(key)
        self.keys.append(key)
        self.events.append((event_id, event))
        return event_id

    def notify(self) -> None:
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    def position(self, after: EventKey | None) -> int:
        return 0 if after is None else bisect.bisect_right(self.keys, after)

    def lapsed(self) -> bool:
        return self.lease_deadline < time.monotonic()


class MemoryStore(LogRules):
    def __init__(self, *, stream_ttl: int = 3600) -> None:
        self.stream_ttl = stream_ttl
        self._logs: dict[str, _Log] = {}
        self._expiry: collections.deque[tuple[float, str]] = collections.deque()
        self._values: dict[str, tuple[bytes, float]] = {}
        self._sets: dict[str, set[str]] = {}
        self._slots: dict[str, dict[str, float]] = {}

    def _purge_expired(self) -> None:
        now = time.monotonic()
        while self._expiry and self._expiry[0][0] <= now:
            _, task_id = self._expiry.popleft()
            self._logs.pop(task_id, None)

    def _log(self, task_id: str) -> _Log | None:
        self._purge_expired()
        return self._logs.get(task_id)

    async def connect(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def get_task(self, task_id: str) -> TaskInfo | None:
        log = self._log(task_id)
        return None if log is None else log.info

    async def _create(self, info: TaskInfo, lease: int) -> TaskInfo | None:
        log = self._log(info.task_id)
        if log is not None:
            return log.info
        self._logs[info.task_id] = _Log(info, lease)
        return None

    async def _start(self, task_id: str, owner: str, lease: int, event: Event, at: str) -> str | None:
        log = self._logs.get(task_id)
        if log is not None and log.info.status == "running" and log.info.owner == owner:
            return log.events[0][0]
        if log is None or not may_start(log.info):
            return None
        log.info.status, log.info.owner, log.info.updated_at = "running", owner, at
        log.lease_deadline = _deadline(lease)
        event_id = log.add(event)
        log.notify()
        return event_id

    async def _append(self, task_id: str, events: Sequence[Event], owner: str, offset: int | None) -> list[str] | None:
        log = self._logs.get(task_id)
        if log is None or not may_append(log.info, owner):
            return None
        done = 0
        if offset is not None:
            done = min(max(log.appended - offset, 0), len(events))
            log.appended = max(log.appended, offset + len(events))
        ids = [event_id for event_id, _ in log.events[len(log.events) - done :]] if done else []
        ids += [log.add(event) for event in events[done:]]
        log.notify()
        return ids

    async def _finish(self, task_id: str, end: Ending, *, only_if_lapsed: bool) -> bool:
        log = self._logs.get(task_id)
        if log is None or not may_finish(log.info) or (only_if_lapsed and not log.lapsed()):
            return False
        log.add(end.event)
        log.info.status, log.info.result, log.info.error, log.info.updated_at = (
            end.status,
            end.result,
            end.error,
            end.at,
        )
        self._expiry.append((time.monotonic() + self.stream_ttl, task_id))
        log.notify()
        return True

    async def _lapsed(self) -> list[str]:
        return [task_id for task_id, log in self._logs.items() if may_finish(log.info) and log.lapsed()]

    async def _renew(self, task_ids: Sequence[str], lease: int) -> list[str]:
        deadline = _deadline(lease)
        cancelled = []
        for task_id in task_ids:
            log = self._logs.get(task_id)
            if log is not None and may_finish(log.info):
                log.lease_deadline = deadline
                if log.cancel_requested:
                    cancelled.append(task_id)
        return cancelled

    async def release(self, task_id: str) -> None:
        return None

    def abandon(self, task_id: str, event: Error) -> None:
        return None  # never called: this store is in the process, so it takes every terminal event

    async def _read(self, task_id: str, after: EventKey | None) -> EventBatch:
        log = self._log(task_id)
        return [] if log is None else log.events[log.position(after) :]

    async def _follow(self, task_id: str, after: EventKey, heartbeat: float) -> AsyncGenerator[EventBatch]:
        log = self._log(task_id)
        if log is None:
            return
        position = log.position(after)
        while True:
            changed = log.changed
            if position < len(log.events):
                batch = log.events[position:]
                position = len(log.events)
                yield batch
                continue
            if log.info.finished:
                return  # resumed at or after the terminal event: nothing more will come
            try:
                async with asyncio.timeout(heartbeat):
                    await changed.wait()
            except TimeoutError:
                yield []

    async def request_cancel(self, task_id: str) -> None:
        log = self._logs.get(task_id)
        if log is not None:
            log.cancel_requested = True

    async def cancel_requests(self) -> AsyncIterator[str]:
        # One process: the runner cancels its tasks directly; the flag above covers the rest at renewal.
        nothing: tuple[str, ...] = ()
        for task_id in nothing:
            yield task_id

    def _live_value(self, key: str) -> bytes | None:
        item = self._values.get(key)
        if item is None:
            return None
        if item[1] <= time.monotonic():
            del self._values[key]
            return None
        return item[0]

    async def get_value(self, key: str) -> bytes | None:
        return self._live_value(key)

    async def set_value(self, key: str, value: bytes, *, ttl: float) -> None:
        if len(self._values) > 10_000:  # expired ones are dropped lazily; sweep now and then
            for stale in [k for k, (_, expires) in self._values.items() if expires <= time.monotonic()]:
                del self._values[stale]
        self._values[key] = (value, time.monotonic() + ttl)

    async def set_value_if_absent(self, key: str, value: bytes, *, ttl: float) -> bool:
        if self._live_value(key) is not None:
            return False
        await self.set_value(key, value, ttl=ttl)
        return True

    async def refresh_value(self, key: str, value: bytes, *, ttl: float) -> bool:
        if self._live_value(key) != value:
            return False
        self._values[key] = (value, time.monotonic() + ttl)
        return True

    async def delete_value(self, key: str, *, if_equals: bytes | None = None) -> None:
        if if_equals is None or self._live_value(key) == if_equals:
            self._values.pop(key, None)

    async def count_in_window(self, key: str, *, ttl: float) -> int:
        value = self._live_value(key)
        count = int(value or b"0") + 1
        expires = self._values[key][1] if value is not None else time.monotonic() + ttl
        self._values[key] = (str(count).encode(), expires)
        return count

    async def claim_slot(self, key: str, member: str, *, limit: int, ttl: float) -> bool:
        now = time.monotonic()
        slots = {m: deadline for m, deadline in self._slots.get(key, {}).items() if deadline > now}
        self._slots[key] = slots
        if member not in slots and len(slots) >= limit:
            return False
        slots[member] = now + ttl
        return True

    async def release_slot(self, key: str, member: str) -> None:
        self._slots.get(key, {}).pop(member, None)

    async def add_member(self, name: str, member: str) -> None:
        self._sets.setdefault(name, set()).add(member)

    async def remove_member(self, name: str, member: str) -> None:
        self._sets.get(name, set()).discard(member)

    async def members(self, name: str) -> set[str]:
        return set(self._sets.get(name, ()))

    async def close(self) -> None:
        self._sets.clear()
        self._slots.clear()
        self._logs.clear()
        self._values.clear()


def _deadline(lease: int) -> float:
    return math.inf if lease < 0 else time.monotonic() + lease / 1000  # no lease: never reaped
