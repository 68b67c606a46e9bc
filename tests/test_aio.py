"""aio.cancel_and_wait and raise_if_cancelling: shutdown never waits forever on a task, nor takes a cancellation
for an upstream failure."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import pytest

from llm_gateway.aio import cancel_and_wait, raise_if_cancelling


async def test_cancel_and_wait_ends_every_task_and_keeps_their_errors() -> None:
    async def fails_when_cancelled() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            raise RuntimeError("while ending")

    sleeper = asyncio.create_task(asyncio.sleep(60))
    failing = asyncio.create_task(fails_when_cancelled())
    done = asyncio.create_task(asyncio.sleep(0))
    await asyncio.sleep(0.01)
    await cancel_and_wait(sleeper, failing, done, None)
    assert sleeper.cancelled() and done.done() and not done.cancelled()
    assert isinstance(failing.exception(), RuntimeError)


async def test_a_task_that_ignores_its_cancellation_is_named_not_waited_on(caplog: pytest.LogCaptureFixture) -> None:
    stop = asyncio.Event()

    async def stubborn() -> None:
        while not stop.is_set():
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                pass  # what a library that swallows cancellation does

    task = asyncio.create_task(stubborn(), name="stubborn-poller")
    await asyncio.sleep(0.01)
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="llm_gateway.aio"):
        await cancel_and_wait(task, timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 2
    assert not task.done()
    assert "stubborn-poller" in caplog.text and "still running" in caplog.text
    stop.set()  # ended by other means, as the tracker's own stop flag does
    task.cancel()
    await asyncio.wait({task}, timeout=2)
    assert task.done()


async def test_the_callers_own_cancellation_goes_on() -> None:
    async def ends_slowly() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            await asyncio.shield(asyncio.sleep(0.5))

    slow = asyncio.create_task(ends_slowly())
    await asyncio.sleep(0.01)
    caller = asyncio.create_task(cancel_and_wait(slow))
    await asyncio.sleep(0.05)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.wait({slow}, timeout=2)
    assert slow.cancelled()


async def test_a_cancellation_turned_into_a_connect_error_is_still_a_cancellation() -> None:
    """httpx's connect can answer a cancellation with ConnectError (encode/httpx#2381); code that maps transport
    errors to upstream failures asks raise_if_cancelling first, so the task ends cancelled, not retried."""

    async def connect_like_httpx() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            raise httpx.ConnectError("All connection attempts failed") from None

    async def request() -> str:
        try:
            await connect_like_httpx()
        except httpx.ConnectError:
            raise_if_cancelling()
            return "taken for an upstream failure"
        return "answered"

    async def request_without_guard() -> str:
        try:
            await connect_like_httpx()
        except httpx.ConnectError:
            return "taken for an upstream failure"
        return "answered"

    guarded, unguarded = asyncio.create_task(request()), asyncio.create_task(request_without_guard())
    await asyncio.sleep(0.01)
    guarded.cancel()
    unguarded.cancel()
    await asyncio.wait({guarded, unguarded}, timeout=2)
    assert guarded.cancelled()
    assert unguarded.result() == "taken for an upstream failure", "the failure this guards against"
