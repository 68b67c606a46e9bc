"""Conversations kept in the store (seed 001's ``/api/chat``): each turn sends the history back to the model.

Turns of one conversation run one after the other, under a lock shared by every replica, so two turns sent
at once both land in the history, in order.
"""

from __future__ import annotations

import msgspec

from .bodies import ChatRequest, from_text
from .content import Message, assistant, user
from .events import Complete
from .locks import held
from .store import Store
from .tasks import TaskRunner


class History(msgspec.Struct):
    messages: list[Message] = msgspec.field(default_factory=list)


class Conversations:
    def __init__(self, store: Store, runner: TaskRunner, *, ttl: float, default_model: str, lock_ttl: float) -> None:
        self.store = store
        self.runner = runner
        self.ttl = ttl
        self.default_model = default_model
        self.lock_ttl = lock_ttl

    async def turn(self, conversation_id: str, body: ChatRequest) -> tuple[str, Complete]:
        """Answer ``body.message`` after the conversation's history; return the task id and its answer."""
        key = f"conversation:{conversation_id}"
        async with held(self.store, f"{key}:lock", ttl=self.lock_ttl):
            stored = await self.store.get_value(key)
            history = msgspec.json.decode(stored, type=History) if stored else History()
            request = from_text(body, self.default_model, history.messages)
            info, _ = await self.runner.submit(None, request)
            complete = await self.runner.answer(info.task_id)
            history.messages += [user(body.message), assistant(complete.text)]
            await self.store.set_value(key, msgspec.json.encode(history), ttl=self.ttl)
        return info.task_id, complete
