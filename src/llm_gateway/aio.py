"""Small asyncio plumbing used across the service: cancel-and-wait, and a WebSocket's receive loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

log = logging.getLogger(__name__)

STOP_SECONDS = 5.0


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None, timeout: float = STOP_SECONDS) -> None:
    """Cancel the tasks and wait until each has ended; what they raise while ending is theirs, not ours.

    Bounded: a task still running after ``timeout`` ignored its cancellation (a library may turn it into an
    error of its own); it is named in the log instead of being waited on forever. A cancellation of the
    caller while it waits is the caller's, and goes on."""
    live = {task for task in tasks if task is not None}
    if not live:
        return
    for task in live:
        task.cancel()
    done, ignored = await asyncio.wait(live, timeout=timeout)
    for task in done:
        if not task.cancelled():
            task.exception()  # retrieved: whatever it ended with is not ours to report
    if ignored:
        names = ", ".join(sorted(task.get_name() for task in ignored))
        log.error("%d task(s) still running %.0fs after being cancelled: %s", len(ignored), timeout, names)


def raise_if_cancelling() -> None:
    """Raise CancelledError if this task is being cancelled: httpx's connect may turn a cancellation into a
    ConnectError (encode/httpx#2381), which must not pass for an upstream failure and be retried."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def until_disconnect(websocket: WebSocket, *, stop: Callable[[str], bool] | None = None) -> None:
    """Read (and drop) a WebSocket's messages until it disconnects, or a text message ``stop`` accepts."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        if stop is not None and stop(message.get("text") or ""):
            return


async def first_of(main: Coroutine[Any, Any, None], watcher: Coroutine[Any, Any, None]) -> bool:
    """Run a WebSocket's sender and its receive loop until either ends; cancel and await the other.

    True if ``main`` (the sender) finished by itself, without an error: the socket can be closed cleanly.
    """
    sender, listener = asyncio.create_task(main), asyncio.create_task(watcher)
    try:
        done, _ = await asyncio.wait({sender, listener}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sender, listener):
            task.cancel()
        for task in (sender, listener):
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError, OSError):
                await task
    return sender in done and not sender.cancelled() and sender.exception() is None


class Release:
    """A one-shot signal that calls back each registered stream when set: no task waits on it per stream.

    Set when this replica's streaming clients should let go and come back elsewhere (the replica is stopping).
    """

    __slots__ = ("_stops", "is_set")

    def __init__(self) -> None:
        self._stops: set[Callable[[], None]] = set()
        self.is_set = False

    def set(self) -> None:
        self.is_set = True
        stops, self._stops = self._stops, set()
        for stop in stops:
            stop()

    def register(self, stop: Callable[[], None]) -> None:
        """Call ``stop`` when set (now, if it already is) unless unregistered first."""
        if self.is_set:
            stop()
        else:
            self._stops.add(stop)

    def unregister(self, stop: Callable[[], None]) -> None:
        self._stops.discard(stop)
