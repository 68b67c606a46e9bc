"""The store seam: an event log and small values, each a protocol; the embedded and the Redis backend
implement both with the same behaviour.

The event log's rules are written once, here (``LogRules``): each backend supplies primitives, atomic where
they must be, that check a task's status with ``may_start``/``may_append``/``may_finish``. (The Redis store
checks them inside its Lua scripts, which must keep these same rules.)
"""

from __future__ import annotations

import abc
import contextlib
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import NamedTuple, Protocol

from ..events import Complete, Error, Event, Status, TaskError, TaskInfo, TaskResult, Terminal, terminal_outcome

EventBatch = list[tuple[str, Event]]
EventKey = tuple[int, int]

_EVENT_ID = re.compile(r"(\d{1,19})(?:-(\d{1,19}))?")

INTERRUPTED = Error("interrupted", "the replica running this task stopped before it finished", retryable=True)
# How a log ends that the store could not keep: out of reach past STORE_OUTAGE_GRACE, or back without the task.
UNAVAILABLE = Error("unavailable", "the store was unavailable, so this answer is incomplete; try again", retryable=True)


class MalformedEventId(ValueError):
    """Not an event id. Ids come from clients (Last-Event-ID): the HTTP edge turns this into a 400."""


class TaskEnded(Exception):
    """The task is no longer running on this replica (it ended, or another replica ended it)."""


def parse_event_id(value: str) -> EventKey:
    """``"1700000000000-3"`` (a Redis stream id) or ``"17"`` -> ``(ms, seq)``; MalformedEventId otherwise."""
    match = _EVENT_ID.fullmatch(value.strip())
    if match is None:
        raise MalformedEventId(value[:64])
    return int(match[1]), int(match[2] or 0)


def format_event_id(key: EventKey) -> str:
    return f"{key[0]}-{key[1]}"


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z"


# --- the rules ----------------------------------------------------------------------------------------------
# A task goes queued -> running -> one terminal status, or straight from queued to a terminal one (a task that
# starts at once is created running). Its log starts with the event that starts it and ends with the one terminal
# event: no event ever follows that.


def may_start(info: TaskInfo) -> bool:
    return info.status == "queued"


def may_append(info: TaskInfo, owner: str) -> bool:
    """Only while it runs, and only by the replica it runs on."""
    return info.status == "running" and info.owner == owner


def may_finish(info: TaskInfo) -> bool:
    return not info.finished


def ends_log(batch: EventBatch) -> bool:
    """The batch ends with the terminal event: nothing more will come."""
    return bool(batch) and isinstance(batch[-1][1], Complete | Error)


def lease_ms(lease_seconds: float | None) -> int:
    """-1 for no lease: the task is never reaped (a Trellis log, which any replica may write)."""
    return -1 if lease_seconds is None else int(lease_seconds * 1000)


class Ending(NamedTuple):
    """What a terminal event makes of its task."""

    event: Terminal
    status: Status
    result: TaskResult | None
    error: TaskError | None
    at: str


def ending(event: Terminal) -> Ending:
    status, result, error = terminal_outcome(event)
    return Ending(event, status, result, error, now_iso())


# --- the protocols ------------------------------------------------------------------------------------------


class EventLog(Protocol):
    """Tasks, their event logs, leases and cancellation requests, shared by every replica on the store."""

    # True where an append never waits and never fails for the store's sake (the store is in this process):
    # a writer then appends inline, as each event comes, rather than behind the generation.
    in_process: bool

    async def connect(self) -> None:
        """Start what the store runs in the background (a live reader); ``close`` stops it, connected or not."""

    async def ping(self) -> None: ...

    async def create_task(
        self,
        task_id: str,
        *,
        fingerprint: str,
        model: str,
        lease_seconds: float | None,
        owner: str | None = None,
        first: Event | None = None,
    ) -> tuple[TaskInfo, bool]:
        """Create a queued task, leased like a running one (None: no lease, never reaped); if it exists,
        return it and False.

        With ``owner`` and ``first`` (both or neither), the new task is created already started, in the same
        atomic step: running on ``owner``, leased, ``first`` its first event (as ``start_task`` would); until
        this replica ``release``s it, its followers here get its events from the writer. An existing task is
        returned unchanged, never started."""

    async def get_task(self, task_id: str) -> TaskInfo | None: ...

    async def start_task(self, task_id: str, *, owner: str, lease_seconds: float | None, event: Event) -> str:
        """Mark a queued task running on ``owner``, take its lease and append its first event.

        Returns the event's id, or "" if the task was no longer queued (cancelled meanwhile). Started again by
        the same owner (a retry whose answer was lost), it returns the id of that first event.
        """

    async def append(self, task_id: str, events: Sequence[Event], *, owner: str, offset: int | None = None) -> str:
        """Append non-terminal events; return the id of the last one.

        Raises TaskEnded, writing nothing, unless the task is running on ``owner``: no event ever follows
        the terminal one, even when another replica ended the task. ``offset``, if given, is how many events
        ``owner`` appended before these: an append tried again after a failure then skips what the failed
        attempt had written after all.
        """

    async def finish(self, task_id: str, event: Terminal) -> bool:
        """Append the terminal event and set the final status once; False if the task had already ended."""

    async def release(self, task_id: str) -> None:
        """This replica no longer writes the task (whether or not its terminal event got written)."""

    def abandon(self, task_id: str, event: Error) -> None:
        """The store could not take the task's terminal event: end this replica's own followers of the task
        with ``event`` anyway (each at the last id it has, so that resuming there reads on correctly)."""

    async def read(self, task_id: str, after: str | None = None) -> EventBatch:
        """Every event after ``after`` (exclusive; None = from the start); MalformedEventId for a bad id."""

    async def last_event_id(self, task_id: str) -> str | None:
        """The id of the task's last event so far; None if it has none (or is unknown)."""

    def follow(self, task_id: str, after: str | None = None, *, heartbeat: float = 15.0) -> AsyncIterator[EventBatch]:
        """Batches of events after ``after``, live, ending with the terminal event (at once if already past it).

        Yields an empty batch after ``heartbeat`` seconds without events, so callers can send keep-alives.
        """

    async def renew_leases(self, task_ids: Sequence[str], *, owner: str, lease_seconds: float) -> list[str]:
        """Renew the leases; return those of ``task_ids`` whose cancellation was requested."""

    async def interrupt_lapsed(self) -> list[str]:
        """End every running task whose lease lapsed with ``error{interrupted}``; return their ids."""

    async def request_cancel(self, task_id: str) -> None:
        """Ask the replica running the task to cancel it: at once if it listens, else at its next renewal."""

    def cancel_requests(self) -> AsyncIterator[str]:
        """Task ids whose cancellation was requested, pushed as they come (may end at once: no push)."""

    async def close(self) -> None: ...


class Values(Protocol):
    """Small values with a time to live (conversations, cached answers, locks, leases) and small sets."""

    async def get_value(self, key: str) -> bytes | None: ...

    async def set_value(self, key: str, value: bytes, *, ttl: float) -> None: ...

    async def set_value_if_absent(self, key: str, value: bytes, *, ttl: float) -> bool:
        """Set it only if no live value is there; True if set (a lock taken)."""

    async def refresh_value(self, key: str, value: bytes, *, ttl: float) -> bool:
        """Extend the ttl if ``value`` is still what is stored; False if it is not (a lock lost)."""

    async def delete_value(self, key: str, *, if_equals: bytes | None = None) -> None: ...

    async def count_in_window(self, key: str, *, ttl: float) -> int:
        """Add one to the counter at ``key`` (created with ``ttl``, not extended); return its new value."""

    async def claim_slot(self, key: str, member: str, *, limit: int, ttl: float) -> bool:
        """Hold (or renew) ``member``'s slot for ``ttl`` among at most ``limit`` live ones; False if all are taken."""

    async def release_slot(self, key: str, member: str) -> None: ...

    async def add_member(self, name: str, member: str) -> None: ...

    async def remove_member(self, name: str, member: str) -> None: ...

    async def members(self, name: str) -> set[str]: ...


class Store(EventLog, Values, Protocol):
    """Both, as each backend provides them: what the app opens, and what needs both (the Trellis tracker)."""


# --- the rules, around each backend's primitives -------------------------------------------------------------


class LogRules(abc.ABC):
    """The public event log (``EventLog``) in terms of a backend's primitives, so that what every backend
    must do alike is written once; primitives answer None where a rule refused them."""

    in_process: bool = False

    async def create_task(
        self,
        task_id: str,
        *,
        fingerprint: str,
        model: str,
        lease_seconds: float | None,
        owner: str | None = None,
        first: Event | None = None,
    ) -> tuple[TaskInfo, bool]:
        if bool(owner) != (first is not None):
            raise TypeError("create_task: owner and first go together")
        now = now_iso()
        info = TaskInfo(
            task_id=task_id,
            status="queued" if first is None else "running",
            created_at=now,
            updated_at=now,
            model=model,
            fingerprint=fingerprint,
            owner=owner or "",
        )
        existing = await self._create(info, lease_ms(lease_seconds), first)
        return (info, True) if existing is None else (existing, False)

    async def start_task(self, task_id: str, *, owner: str, lease_seconds: float | None, event: Event) -> str:
        return await self._start(task_id, owner, lease_ms(lease_seconds), event, now_iso()) or ""

    async def append(self, task_id: str, events: Sequence[Event], *, owner: str, offset: int | None = None) -> str:
        ids = await self._append(task_id, events, owner, offset)
        if ids is None:
            raise TaskEnded(task_id)
        return ids[-1] if ids else ""

    async def finish(self, task_id: str, event: Terminal) -> bool:
        return await self._finish(task_id, ending(event), only_if_lapsed=False)

    async def interrupt_lapsed(self) -> list[str]:
        lapsed = await self._lapsed()
        return [task_id for task_id in lapsed if await self._finish(task_id, ending(INTERRUPTED), only_if_lapsed=True)]

    async def renew_leases(self, task_ids: Sequence[str], *, owner: str, lease_seconds: float) -> list[str]:
        return await self._renew(task_ids, lease_ms(lease_seconds))

    async def read(self, task_id: str, after: str | None = None) -> EventBatch:
        return await self._read(task_id, None if after is None else parse_event_id(after))

    async def follow(
        self, task_id: str, after: str | None = None, *, heartbeat: float = 15.0
    ) -> AsyncIterator[EventBatch]:
        start = (0, 0) if after is None else parse_event_id(after)
        async with contextlib.aclosing(self._follow(task_id, start, heartbeat)) as batches:
            async for batch in batches:
                yield batch
                if ends_log(batch):
                    return

    @abc.abstractmethod
    async def _create(self, info: TaskInfo, lease: int, first: Event | None) -> TaskInfo | None:
        """Store ``info`` with its lease (ms, -1: none) unless the task exists: then return that one. With
        ``first``, ``info`` says running on its owner, and ``first`` is appended, as ``_start`` does."""

    @abc.abstractmethod
    async def _start(self, task_id: str, owner: str, lease: int, event: Event, at: str) -> str | None:
        """If ``may_start``: running on ``owner`` (updated ``at``), leased, ``event`` appended; its id."""

    @abc.abstractmethod
    async def _append(self, task_id: str, events: Sequence[Event], owner: str, offset: int | None) -> list[str] | None:
        """If ``may_append``: the events appended (those past the ``offset``-th of the owner's, if given); the ids
        of all of them."""

    @abc.abstractmethod
    async def _finish(self, task_id: str, end: Ending, *, only_if_lapsed: bool) -> bool:
        """If ``may_finish`` (and, for the reaper, the lease lapsed): the terminal event appended, the task
        ended as ``end`` says, its lease dropped and its log left to expire."""

    @abc.abstractmethod
    async def _lapsed(self) -> list[str]:
        """Tasks whose lease may have lapsed: candidates for the reaper, which checks each as it ends it."""

    @abc.abstractmethod
    async def _renew(self, task_ids: Sequence[str], lease: int) -> list[str]:
        """Extend the leases of those not ended; those whose cancellation was requested. Called each lease
        period, with no tasks too (a backend may have bookkeeping to send)."""

    @abc.abstractmethod
    async def _read(self, task_id: str, after: EventKey | None) -> EventBatch: ...

    @abc.abstractmethod
    def _follow(self, task_id: str, after: EventKey, heartbeat: float) -> AsyncGenerator[EventBatch]:
        """Batches after ``after`` ((0, 0): from the start), live; empty ones as heartbeats. Ends at once if
        nothing is left to come (the task is unknown, or ``after`` is at or past its terminal event)."""
