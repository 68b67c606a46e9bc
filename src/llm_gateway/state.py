"""The gateway's resources, opened in the app's lifespan and handed to routes through ``app.state``."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import HTTPConnection

from .ai_chats import AiChats
from .answers import AnswerCache
from .config import Settings
from .conversations import Conversations
from .providers.registry import Providers
from .store import Store
from .tasks import TaskRunner
from .tenants import TenantLimits
from .trellis import TrellisTracker


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


def gateway(connection: HTTPConnection) -> Gateway:
    value: Gateway = connection.app.state.gateway
    return value
