"""Conversations kept in the store (seed 001's ``/api/chat``): each turn sends the history back to the model.

Turns of one conversation run one after the other, under a lock shared by every replica, so two turns sent
at once both land in the history, in order. A conversation keeps its newest ``max_messages`` (oldest turns
dropped first, so it always starts with a user turn, as the Messages API wants).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import msgspec

from . import keys
from .bodies import ChatRequest, from_text
from .content import Message, assistant, user
from .events import Complete
from .locks import held
from .store import Store
from .tasks import TaskRunner
from .tenants import public, scoped


class History(msgspec.Struct):
    messages: list[Message] = msgspec.field(default_factory=list)


@dataclass(frozen=True)
class Conversations:
    store: Store
    runner: TaskRunner
    ttl: float
    default_model: str
    lock_ttl: float
    max_messages: int = 100

    async def turn(self, tenant: str, conversation_id: str, body: ChatRequest) -> tuple[str, Complete]:
        """Answer ``body.message`` after the tenant's conversation; return the (public) task id and the answer."""
        scoped_id = scoped(tenant, conversation_id)
        key = keys.conversation(scoped_id)
        async with held(self.store, keys.conversation_lock(scoped_id), ttl=self.lock_ttl):
            stored = await self.store.get_value(key)
            history = msgspec.json.decode(stored, type=History) if stored else History()
            request = from_text(body, self.default_model, history.messages)
            info, _ = await self.runner.submit(None, request, tenant=tenant)
            complete = await self.runner.answer(info.task_id)
            history.messages = newest(
                [*history.messages, user(body.message), assistant(complete.text)], self.max_messages
            )
            await self.store.set_value(key, msgspec.json.encode(history), ttl=self.ttl)
        return public(info.task_id), complete


class _Turn(Protocol):
    @property
    def role(self) -> str: ...


T = TypeVar("T", bound=_Turn)


def newest(messages: Sequence[T], limit: int) -> list[T]:
    """The newest ``limit`` messages at most, starting with a user turn (kept conversations and AI SDK chats)."""
    kept = list(messages[-limit:])
    while kept and kept[0].role != "user":
        kept = kept[1:]
    return kept
