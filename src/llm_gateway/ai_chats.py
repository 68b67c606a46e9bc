"""AI SDK chats kept in the store (``useChat``'s chats, API.md §4 "Drop-in APIs"): Vercel's resumable-stream
recipe, ready-made.

Per tenant and chat id the store keeps the chat's UIMessages and, while an answer is generated, the task doing
it (its *active stream*). One generation runs per chat: a new turn stops the one before (its partial answer is
kept). An answer is folded into the chat once its task has ended, by the replica that ran it (the runner's end
hook) or, if that replica died first, by the next request that reads the chat: the log is the truth, so every
replica folds the same message. Changes to a chat are made under its lock, shared by every replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass

import msgspec

from . import keys
from .conversations import newest
from .dialects_ui import assistant_message
from .errors import Conflict, NotFound
from .events import TaskInfo
from .locks import held
from .store import Store
from .tasks import TaskRunner
from .tenants import TenantLimits, public, scoped
from .ui_messages import AiChatRequest, UIMessage, merged, to_generation


class Chat(msgspec.Struct):
    messages: list[UIMessage] = msgspec.field(default_factory=list)


@dataclass(frozen=True)
class AiChats:
    store: Store
    runner: TaskRunner
    limits: TenantLimits
    ttl: float
    default_model: str
    lock_ttl: float
    max_messages: int = 100
    stop_wait: float = 10.0  # for a stopped generation to write its end (a dead replica's: two leases)

    async def send(self, tenant: str, body: AiChatRequest) -> TaskInfo:
        """Start the answer to the chat as ``body`` leaves it; the task is the chat's active stream."""
        chat_id = scoped(tenant, body.id)
        async with self._locked(chat_id):
            messages = merged(await self._fold(chat_id, stop=True), body)
            request = to_generation(body, messages, self.default_model)
            last = messages[-1]
            # An answer to tool results goes on with the assistant message they belong to, as useChat expects.
            message_id = last.id if last.role == "assistant" else f"msg_{uuid.uuid4().hex}"
            await self._save(chat_id, messages)

            async def keep() -> None:
                async with self._locked(chat_id):  # a quick end waits here until the chat names its task
                    await self._fold(chat_id, stop=False)

            info, _ = await self.runner.submit(None, request, tenant=tenant, message_id=message_id, on_end=keep)
            await self.store.set_value(keys.ai_chat_active(chat_id), info.task_id.encode(), ttl=self.ttl)
        return info

    async def running(self, tenant: str, chat_id: str) -> str | None:
        """The (scoped) id of the task generating the chat's answer now, if one is."""
        active = await self.store.get_value(keys.ai_chat_active(scoped(tenant, chat_id)))
        info = None if active is None else await self.store.get_task(active.decode())
        return None if info is None or info.finished else info.task_id

    async def stop(self, tenant: str, chat_id: str) -> TaskInfo | None:
        """Cancel the chat's running generation wherever it runs and keep its partial answer; None if none ran."""
        task_id = await self.running(tenant, chat_id)
        if task_id is None:
            return None
        await self._stop(task_id)
        await self.messages(tenant, chat_id)
        return await self.store.get_task(task_id)

    async def messages(self, tenant: str, chat_id: str) -> list[UIMessage]:
        """The chat's messages, its last answer in once that has ended (an unknown chat has none)."""
        scoped_id = scoped(tenant, chat_id)
        if await self.store.get_value(keys.ai_chat_active(scoped_id)) is None:
            return await self._load(scoped_id)
        async with self._locked(scoped_id):
            return await self._fold(scoped_id, stop=False)

    async def _fold(self, chat_id: str, *, stop: bool) -> list[UIMessage]:
        """The chat's messages with the active stream's answer folded in once it has ended (stopped first if
        ``stop``); the chat then has no active stream. Called under the chat's lock."""
        messages = await self._load(chat_id)
        active_key = keys.ai_chat_active(chat_id)
        active = await self.store.get_value(active_key)
        if active is None:
            return messages
        task_id = active.decode()
        info = await self.store.get_task(task_id)
        if info is not None and not info.finished:
            if not stop:
                return messages
            await self._stop(task_id)
        answer = assistant_message(public(task_id), [event for _, event in await self.store.read(task_id)])
        if answer is not None:
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant" and last.id == answer.id:
                messages[-1] = UIMessage(id=last.id, role="assistant", parts=[*last.parts, *answer.parts])
            else:
                messages.append(answer)
            await self._save(chat_id, messages)
        await self.store.delete_value(active_key, if_equals=active)
        return messages

    async def _stop(self, task_id: str) -> None:
        try:
            await self.runner.cancel(task_id)
        except (Conflict, NotFound):
            pass  # it ended meanwhile
        try:
            async with asyncio.timeout(self.stop_wait):
                await self.runner.wait(task_id)
        except NotFound:
            pass  # its log expired: nothing to keep
        except TimeoutError:
            raise Conflict("the chat's generation did not stop in time; try again") from None
        # An ended task holds no slot: free it now, not a moment later when its replica gets to it, so the
        # turn that stopped it may start at TENANT_MAX_CONCURRENT=1.
        await self.limits.release(task_id)

    def _locked(self, chat_id: str) -> contextlib.AbstractAsyncContextManager[None]:
        return held(self.store, keys.ai_chat_lock(chat_id), ttl=self.lock_ttl)

    async def _load(self, chat_id: str) -> list[UIMessage]:
        stored = await self.store.get_value(keys.ai_chat(chat_id))
        return msgspec.json.decode(stored, type=Chat).messages if stored else []

    async def _save(self, chat_id: str, messages: list[UIMessage]) -> None:
        chat = Chat(newest(messages, self.max_messages))
        await self.store.set_value(keys.ai_chat(chat_id), msgspec.json.encode(chat), ttl=self.ttl)
