"""The store seam: one protocol, an embedded and a Redis backend with the same behaviour."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from ..events import Event, TaskInfo, Terminal

EventBatch = list[tuple[str, Event]]

_EVENT_ID = re.compile(r"(\d{1,19})(?:-(\d{1,19}))?")


class MalformedEventId(ValueError):
    """Not an event id. Ids come from clients (Last-Event-ID): the HTTP edge turns this into a 400."""


def parse_event_id(value: str) -> tuple[int, int]:
    """``"1700000000000-3"`` (a Redis stream id) or ``"17"`` -> ``(ms, seq)``; MalformedEventId otherwise."""
    match = _EVENT_ID.fullmatch(value.strip())
    if match is None:
        raise MalformedEventId(value[:64])
    return int(match[1]), int(match[2] or 0)


def format_event_id(key: tuple[int, int]) -> str:
    return f"{key[0]}-{key[1]}"


def next_event_id(last: tuple[int, int]) -> tuple[int, int]:
    """Redis' rule: the clock's millisecond, or the last one with the next sequence number if the clock lags."""
    now = int(time.time() * 1000)
    return (now, 0) if now > last[0] else (last[0], last[1] + 1)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z"


class TaskEnded(Exception):
    """The task is no longer running on this replica (it ended, or another replica ended it)."""


class Store(Protocol):
    """Tasks, their event logs, leases and cancellation requests, shared by every replica on the store."""

    async def ping(self) -> None: ...

    async def create_task(
        self, task_id: str, *, fingerprint: str, model: str, lease_seconds: float | None
    ) -> tuple[TaskInfo, bool]:
        """Create a queued task, leased like a running one (None: no lease, never reaped); if it exists,
        return it and False."""

    async def get_task(self, task_id: str) -> TaskInfo | None: ...

    async def start_task(self, task_id: str, *, owner: str, lease_seconds: float | None, event: Event) -> str:
        """Mark a queued task running on ``owner``, take its lease and append its first event.

        Returns the event's id, or "" if the task was no longer queued (cancelled meanwhile).
        """

    async def append(self, task_id: str, events: Sequence[Event], *, owner: str) -> str:
        """Append non-terminal events; return the id of the last one.

        Raises TaskEnded, writing nothing, unless the task is running on ``owner``: no event ever follows
        the terminal one, even when another replica ended the task.
        """

    async def finish(self, task_id: str, event: Terminal) -> bool:
        """Append the terminal event and set the final status once; False if the task had already ended."""

    async def release(self, task_id: str) -> None:
        """This replica no longer writes the task (whether or not its terminal event got written)."""

    async def read(self, task_id: str, after: str | None = None) -> EventBatch:
        """Every event after ``after`` (exclusive; None = from the start)."""

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

    # Small values with a time to live: conversations, cached answers, locks and leases.
    async def get_value(self, key: str) -> bytes | None: ...

    async def set_value(self, key: str, value: bytes, *, ttl: float) -> None: ...

    async def set_value_if_absent(self, key: str, value: bytes, *, ttl: float) -> bool:
        """Set it only if no live value is there; True if set (a lock taken)."""

    async def refresh_value(self, key: str, value: bytes, *, ttl: float) -> bool:
        """Extend the ttl if ``value`` is still what is stored; False if it is not (a lock lost)."""

    async def delete_value(self, key: str, *, if_equals: bytes | None = None) -> None: ...

    # Small sets: the Trellis tasks the cluster tracks.
    async def add_member(self, name: str, member: str) -> None: ...

    async def remove_member(self, name: str, member: str) -> None: ...

    async def members(self, name: str) -> set[str]: ...

    async def close(self) -> None: ...
