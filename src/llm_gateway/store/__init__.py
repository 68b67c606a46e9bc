"""Stores, picked by URL: embedded in-memory (no URL) or Redis Streams (``redis://``; a Redis Cluster:
``redis+cluster://``, or ``cluster``).

Each implements both halves of the seam: the event log (``EventLog``) and small values (``Values``).
"""

from __future__ import annotations

from .base import (
    UNAVAILABLE,
    EventBatch,
    EventLog,
    MalformedEventId,
    Store,
    TaskEnded,
    Values,
    format_event_id,
    parse_event_id,
)
from .health import quiet_level

__all__ = [
    "UNAVAILABLE",
    "EventBatch",
    "EventLog",
    "MalformedEventId",
    "Store",
    "TaskEnded",
    "Values",
    "format_event_id",
    "open_store",
    "parse_event_id",
    "quiet_level",
]


def open_store(
    url: str | None,
    *,
    prefix: str = "llmgw:",
    stream_ttl: int = 3600,
    outage_grace: float = 30.0,
    max_bytes: int = 256 * 1024 * 1024,
    cluster: bool = False,
) -> Store:
    """The store for ``url``, not yet connected: ``connect()`` starts it, ``close()`` ends it.

    ``outage_grace``: how long a Redis store may not answer before the tasks it holds end ``unavailable``.
    ``max_bytes`` bounds the embedded store's finished logs (Redis has its own ``maxmemory``).
    """
    if not url:
        from .memory import MemoryStore

        return MemoryStore(stream_ttl=stream_ttl, max_bytes=max_bytes)
    from .redis import RedisStore

    return RedisStore.from_url(url, prefix=prefix, stream_ttl=stream_ttl, outage_grace=outage_grace, cluster=cluster)
