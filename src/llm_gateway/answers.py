"""The shared answer cache of ``POST /chat {question}`` (seed 002): equal questions share one generation.

An entry maps the SHA-256 of the normalised request to the task that answers it, for ``ttl`` seconds. It is
claimed before the generation starts (single-flight: identical requests arriving meanwhile follow the same
task), and a failed or expired task is never shared: the next request generates again.
"""

from __future__ import annotations

import asyncio
import hashlib
import re

import msgspec

from . import keys
from .content import Message
from .errors import GatewayError
from .events import TaskInfo
from .providers import GenerationRequest
from .store import Store
from .tasks import TaskRunner, new_task_id
from .tenants import scoped

SHAREABLE = frozenset({"queued", "running", "completed"})


def _normalised(message: Message) -> Message:
    if isinstance(message.content, str):
        return Message(message.role, re.sub(r"\s+", " ", message.content).strip())
    return message


def cache_key(request: GenerationRequest) -> str:
    """SHA-256 of the normalised request: whitespace-insensitive question, model and parameters."""
    normalised = msgspec.structs.replace(request, messages=[_normalised(m) for m in request.messages])
    return hashlib.sha256(msgspec.json.encode(normalised, order="sorted")).hexdigest()


class AnswerCache:
    def __init__(self, store: Store, runner: TaskRunner, *, ttl: float) -> None:
        self.store = store
        self.runner = runner
        self.ttl = ttl

    async def task_for(self, tenant: str, request: GenerationRequest, *, use_cache: bool = True) -> TaskInfo:
        """The task answering ``request`` for ``tenant``: a cached or in-flight one (single-flight), else a new one."""
        key = keys.answer(scoped(tenant, cache_key(request)))
        if not use_cache:
            info, _ = await self.runner.submit(None, request, tenant=tenant)
            await self.store.set_value(key, info.task_id.encode(), ttl=self.ttl)
            return info
        for attempt in range(40):
            cached = await self.store.get_value(key)
            if cached is not None:
                cached_info = await self.store.get_task(cached.decode())
                if cached_info is None and attempt < 20:
                    await asyncio.sleep(0.05)  # claimed a moment ago; its task is being created
                    continue
                if cached_info is not None and cached_info.status in SHAREABLE:
                    return cached_info
                await self.store.delete_value(key, if_equals=cached)  # failed or expired: not an answer to share
            # Claim the key before generating, so identical requests arriving meanwhile share this generation.
            task_id = new_task_id()
            claim = scoped(tenant, task_id).encode()  # what the cache holds: the task's scoped id
            if await self.store.set_value_if_absent(key, claim, ttl=self.ttl):
                try:
                    info, _ = await self.runner.submit(task_id, request, tenant=tenant)
                except BaseException:
                    await self.store.delete_value(key, if_equals=claim)
                    raise
                return info
        raise GatewayError("unavailable", "the answer cache is busy; try again", retry_after=1)
