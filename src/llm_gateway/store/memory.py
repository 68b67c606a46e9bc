"""The embedded store: everything in this process's memory, for a single replica.

A running task's log keeps its events as objects, since its followers read them as they come. A finished one is
compacted, so that what it holds is small and counted: its events msgpack-encoded back to back in one buffer, with
two int arrays to find them, and its info encoded too (bench/store_memory.py: 3.8 KiB for a finished 50-delta
answer, where an object per event took 18 KiB). Finished logs go when they expire or, oldest first, when together
they would hold more than ``max_bytes``. Running tasks are never evicted.
"""

from __future__ import annotations

import array
import asyncio
import bisect
import collections
import ctypes
import itertools
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence

import msgspec

from ..events import Complete, Error, Event, TaskInfo, terminal_outcome
from .base import (
    Ending,
    EventBatch,
    EventKey,
    LogRules,
    may_append,
    may_finish,
    may_start,
)

# A finished log's bytes besides its buffers and task id: its objects, array headers, its dict entry. Measured
# with tracemalloc (bench/store_memory.py, tests/test_store.py), so that the bytes counted are the bytes held.
LOG_OVERHEAD = 550

# glibc keeps freed memory mapped: after every log had expired, RSS stayed at its peak (bench/store_memory.py).
# malloc_trim hands it back to the OS, in ~4 ms for 150 MiB; so once this many bytes of logs went, not per log.
TRIM_AFTER = 16 * 1024 * 1024


def _glibc_malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except AttributeError:  # not glibc: nothing to call
        return None
    trim.argtypes = [ctypes.c_size_t]
    return trim


_malloc_trim = _glibc_malloc_trim()
_encoder = msgspec.msgpack.Encoder()
_event_decoder = msgspec.msgpack.Decoder(Event)
_info_decoder = msgspec.msgpack.Decoder(TaskInfo)


class _Log:
    __slots__ = (
        "appended",
        "cancel_requested",
        "changed",
        "data",
        "ends",
        "expires",
        "info",
        "lease_deadline",
        "live",
        "ms",
        "seq",
    )

    def __init__(self, info: TaskInfo, lease: int) -> None:
        self.info: TaskInfo | bytes = info  # encoded once finished
        # While it runs, its events as they are, with their ids: followers read them as often as they wake.
        self.live: list[tuple[str, Event]] | None = []
        # Once finished, the events back to back: event i ends at ends[i], and was added at ms[i] (the whole of its
        # id: see event_id).
        self.data: bytes = b""
        self.ends = array.array("q")
        self.ms = array.array("q")
        self.seq = 0  # of the last event, among those of its ms
        self.changed: asyncio.Event | None = asyncio.Event()  # None once finished: nothing more will come
        self.lease_deadline = _deadline(lease)
        self.cancel_requested = False
        self.expires = math.inf
        self.appended = 0  # events its owner appended (``offset`` of ``append``)

    def task_info(self) -> TaskInfo:
        """A running task's own (mutable) info; a finished one's, decoded."""
        if isinstance(self.info, TaskInfo):
            return self.info
        info = _info_decoder.decode(self.info)
        terminal = self.events(len(self) - 1)[0][1]
        assert isinstance(terminal, Complete | Error)
        _, info.result, info.error = terminal_outcome(terminal)
        return info

    def add(self, event: Event) -> str:
        assert self.live is not None, "a finished log never changes"
        now = int(time.time() * 1000)
        last = self.ms[-1] if self.ms else 0
        self.ms.append(max(now, last))  # a clock that went back gives the last ms again
        self.seq = 0 if now > last else self.seq + 1
        event_id = f"{self.ms[-1]}-{self.seq}"
        self.live.append((event_id, event))
        return event_id

    def __len__(self) -> int:
        return len(self.ms)

    def event_id(self, i: int) -> str:
        """Redis' rule: ``<ms>-<seq>``, seq numbering the events of one ms from 0 (so it needs no storing)."""
        return f"{self.ms[i]}-{i - bisect.bisect_left(self.ms, self.ms[i])}"

    def position(self, after: EventKey | None) -> int:
        """The index of the first event after ``after``."""
        if after is None:
            return 0
        ms, seq = after
        first = bisect.bisect_left(self.ms, ms)
        return first + min(seq + 1, bisect.bisect_right(self.ms, ms) - first)

    def events(self, start: int) -> EventBatch:
        if self.live is not None:
            return self.live[start:]
        batch: EventBatch = []
        begin = self.ends[start - 1] if start else 0
        with memoryview(self.data) as data:
            for i in range(start, len(self.ends)):
                batch.append((self.event_id(i), _event_decoder.decode(data[begin : self.ends[i]])))
                begin = self.ends[i]
        return batch

    def last_id(self) -> str | None:
        return self.event_id(len(self.ms) - 1) if self.ms else None

    def notify(self) -> None:
        if self.changed is not None:
            changed, self.changed = self.changed, asyncio.Event()
            changed.set()

    def lapsed(self) -> bool:
        return self.lease_deadline < time.monotonic()

    def freeze(self, expires: float) -> None:
        """The task finished: its log never changes again, so hold it in as few bytes as it takes."""
        info = self.task_info()
        self.info = _encoder.encode(msgspec.structs.replace(info, result=None, error=None))  # in its terminal event
        assert self.live is not None
        encoded = [_encoder.encode(event) for _, event in self.live]
        self.data = b"".join(encoded)
        ends = itertools.accumulate(map(len, encoded))
        self.ends, self.ms, self.live = array.array("q", ends), array.array("q", self.ms), None
        self.expires = expires
        changed, self.changed = self.changed, None
        if changed is not None:
            changed.set()

    def size(self, task_id: str) -> int:
        """What a finished log holds, in bytes."""
        assert isinstance(self.info, bytes)
        arrays = (len(self.ends) + len(self.ms)) * 8
        return LOG_OVERHEAD + len(task_id) + len(self.info) + len(self.data) + arrays


class MemoryStore(LogRules):
    in_process = True

    def __init__(self, *, stream_ttl: int = 3600, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.stream_ttl = stream_ttl
        self.max_bytes = max_bytes
        self.finished_bytes = 0  # what the finished logs hold, within max_bytes
        self._dropped_bytes = 0  # since the last malloc_trim
        self._running: dict[str, _Log] = {}  # queued or running
        self._finished: collections.OrderedDict[str, _Log] = collections.OrderedDict()  # oldest first
        self._values: dict[str, tuple[bytes, float]] = {}
        self._sets: dict[str, set[str]] = {}
        self._slots: dict[str, dict[str, float]] = {}

    def _trim(self) -> None:
        """Drop the finished logs that expired, then the oldest while they hold more than ``max_bytes``."""
        now = time.monotonic()
        while self._finished:
            task_id, log = next(iter(self._finished.items()))  # the oldest, the first to expire (one TTL for all)
            if log.expires > now and self.finished_bytes <= self.max_bytes:
                break
            del self._finished[task_id]
            size = log.size(task_id)
            self.finished_bytes -= size
            self._dropped_bytes += size
        if self._dropped_bytes >= TRIM_AFTER and _malloc_trim is not None:
            _malloc_trim(0)
            self._dropped_bytes = 0

    def _log(self, task_id: str) -> _Log | None:
        self._trim()
        log = self._running.get(task_id)
        return log if log is not None else self._finished.get(task_id)

    async def connect(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def get_task(self, task_id: str) -> TaskInfo | None:
        log = self._log(task_id)
        return None if log is None else log.task_info()

    async def last_event_id(self, task_id: str) -> str | None:
        log = self._log(task_id)
        return None if log is None else log.last_id()

    async def _create(self, info: TaskInfo, lease: int, first: Event | None) -> TaskInfo | None:
        log = self._log(info.task_id)
        if log is not None:
            return log.task_info()
        log = self._running[info.task_id] = _Log(info, lease)
        if first is not None:
            log.add(first)  # nobody follows it yet: an unknown task's followers have ended
        return None

    async def _start(self, task_id: str, owner: str, lease: int, event: Event, at: str) -> str | None:
        log = self._running.get(task_id)
        if log is not None and len(log) and log.task_info().status == "running" and log.task_info().owner == owner:
            return log.event_id(0)  # a start tried again: it happened
        if log is None or not may_start(info := log.task_info()):
            return None
        info.status, info.owner, info.updated_at = "running", owner, at
        log.lease_deadline = _deadline(lease)
        event_id = log.add(event)
        log.notify()
        return event_id

    async def _append(self, task_id: str, events: Sequence[Event], owner: str, offset: int | None) -> list[str] | None:
        log = self._running.get(task_id)
        if log is None or not may_append(log.task_info(), owner):
            return None
        done = 0  # of these events, already appended by an earlier try
        if offset is not None:
            done = min(max(log.appended - offset, 0), len(events))
            log.appended = max(log.appended, offset + len(events))
        count = len(log)
        ids = [log.event_id(i) for i in range(count - done, count)]
        ids += [log.add(event) for event in events[done:]]
        log.notify()
        return ids

    async def _finish(self, task_id: str, end: Ending, *, only_if_lapsed: bool) -> bool:
        log = self._running.get(task_id)
        if log is None or not may_finish(info := log.task_info()) or (only_if_lapsed and not log.lapsed()):
            return False
        log.add(end.event)
        info.status, info.result, info.error, info.updated_at = end.status, end.result, end.error, end.at
        del self._running[task_id]
        log.freeze(time.monotonic() + self.stream_ttl)
        self._finished[task_id] = log
        self.finished_bytes += log.size(task_id)
        self._trim()
        return True

    async def _lapsed(self) -> list[str]:
        return [task_id for task_id, log in self._running.items() if log.lapsed()]

    async def _renew(self, task_ids: Sequence[str], lease: int) -> list[str]:
        deadline = _deadline(lease)
        cancelled = []
        for task_id in task_ids:
            log = self._running.get(task_id)
            if log is not None:
                log.lease_deadline = deadline
                if log.cancel_requested:
                    cancelled.append(task_id)
        return cancelled

    async def release(self, task_id: str) -> None:
        return None

    async def _read(self, task_id: str, after: EventKey | None) -> EventBatch:
        log = self._log(task_id)
        return [] if log is None else log.events(log.position(after))

    async def _follow(self, task_id: str, after: EventKey, heartbeat: float) -> AsyncGenerator[EventBatch]:
        log = self._log(task_id)
        if log is None:
            return
        position = log.position(after)
        while True:
            changed = log.changed
            if position < len(log):
                batch = log.events(position)
                position += len(batch)
                yield batch
                continue
            if changed is None:
                return  # finished, and resumed at or after the terminal event: nothing more will come
            try:
                async with asyncio.timeout(heartbeat):
                    await changed.wait()
            except TimeoutError:
                yield []

    def abandon(self, task_id: str, event: Error) -> None:
        return None  # never called: this store is in the process, so it takes every terminal event

    async def request_cancel(self, task_id: str) -> None:
        log = self._running.get(task_id)
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
        self._running.clear()
        self._finished.clear()
        self.finished_bytes = 0
        self._values.clear()


def _deadline(lease: int) -> float:
    return math.inf if lease < 0 else time.monotonic() + lease / 1000  # no lease: never reaped
