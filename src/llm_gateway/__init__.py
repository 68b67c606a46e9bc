"""llm_gateway: a lean asyncio gateway that streams Claude to browsers over durable, resumable event logs."""

from __future__ import annotations

__version__ = "0.1.0"
