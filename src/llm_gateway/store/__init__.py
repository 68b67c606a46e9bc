"""Stores, picked by URL: embedded in-memory (no URL) or Redis Streams (``redis://``)."""

from __future__ import annotations

from .base import EventBatch, MalformedEventId, Store, TaskEnded, format_event_id, parse_event_id

__all__ = ["EventBatch", "MalformedEventId", "Store", "TaskEnded", "format_event_id", "open_store", "parse_event_id"]


def open_store(url: str | None, *, prefix: str = "llmgw:", stream_ttl: int = 3600) -> Store:
    if not url:
        from .memory import MemoryStore

        return MemoryStore(stream_ttl=stream_ttl)
    from .redis import RedisStore

    return RedisStore.from_url(url, prefix=prefix, stream_ttl=stream_ttl)
