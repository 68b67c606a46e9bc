"""The gateway's resources, opened in the app's lifespan and handed to routes through ``app.state``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from starlette.requests import HTTPConnection

from .ai_chats import AiChats
from .aio import Release
from .answers import AnswerCache
from .config import Settings
from .conversations import Conversations
from .providers.registry import Providers
from .store import Store
from .store.memory import MemoryStore
from .tasks import TaskRunner
from .tenants import TenantLimits
from .trellis import TrellisTracker

# The lifespan state key of ``Gateway.drain``, which the server awaits as it begins to stop.
DRAIN = "llm_gateway.drain"


@dataclass(frozen=True)
class Gateway:
    settings: Settings
    store: Store
    providers: Providers
    runner: TaskRunner
    trellis: TrellisTracker
    answers: AnswerCache
    conversations: Conversations
    limits: TenantLimits
    ai_chats: AiChats
    # Set when this replica's streaming clients should let go (SSE ends with retry:) and come back elsewhere.
    released: Release = field(default_factory=Release)

    async def drain(self) -> None:
        """The process is stopping (API.md §2 "Shutdown"): refuse new generations, let the running ones go on
        for the grace, and release the streaming clients as soon as they can read on elsewhere."""
        wound_down = self.runner.drain()
        if isinstance(self.store, MemoryStore):
            # No other replica can serve this store's logs: clients stay until every generation has ended
            # (the runner bounds that by the grace).
            await asyncio.wait({wound_down})
        self.released.set()


def gateway(connection: HTTPConnection) -> Gateway:
    value: Gateway = connection.app.state.gateway
    return value
