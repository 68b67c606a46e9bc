"""The app's lifespan: it opens the gateway's resources and closes exactly those, in reverse order."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from llm_gateway.app import create_app
from llm_gateway.providers.registry import Providers
from llm_gateway.store.redis import RedisStore
from llm_gateway.tasks import TaskRunner
from llm_gateway.trellis import PiAPIClient, TrellisTracker
from tests.conftest import Emulator, gateway_settings

CLOSERS = [(RedisStore, "close"), (Providers, "close"), (TaskRunner, "shutdown"), (PiAPIClient, "close")]


def record_closes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    closed: list[str] = []

    def recording(cls: type, original: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
        async def close(self: Any) -> None:
            closed.append(cls.__name__)
            await original(self)

        return close

    for cls, name in CLOSERS:
        monkeypatch.setattr(cls, name, recording(cls, getattr(cls, name)))
    return closed


def background_tasks(before: set[asyncio.Task[Any]]) -> list[str]:
    return sorted(task.get_name() for task in asyncio.all_tasks() - before if not task.done())


async def test_a_failing_start_closes_what_was_opened(
    monkeypatch: pytest.MonkeyPatch, emulator: Emulator, redis_url: str
) -> None:
    async def failing_start(self: TrellisTracker) -> None:
        raise RuntimeError("trellis would not start")

    monkeypatch.setattr(TrellisTracker, "start", failing_start)
    closed = record_closes(monkeypatch)
    app = create_app(gateway_settings(emulator.url, redis_url=redis_url))
    before = asyncio.all_tasks()
    with pytest.raises(RuntimeError, match="trellis would not start"):
        async with app.router.lifespan_context(app):
            pytest.fail("the app started")
    assert closed == ["PiAPIClient", "TaskRunner", "Providers", "RedisStore"]
    assert background_tasks(before) == [], "the runner's loops and the store's reader are gone"


async def test_shutdown_closes_everything_in_reverse_order(
    monkeypatch: pytest.MonkeyPatch, emulator: Emulator, redis_url: str
) -> None:
    closed = record_closes(monkeypatch)
    app = create_app(gateway_settings(emulator.url, redis_url=redis_url))
    before = asyncio.all_tasks()
    async with app.router.lifespan_context(app):
        running = background_tasks(before)
        assert {"lease-loop", "cancel-listener", "redis-fanout", "trellis-tracker"} <= set(running), running
    assert closed == ["PiAPIClient", "TaskRunner", "Providers", "RedisStore"]
    assert background_tasks(before) == []
