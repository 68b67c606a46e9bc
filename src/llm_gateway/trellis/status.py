"""Trellis statuses: PiAPI's task data -> our ``Progress`` events -> seed 000's messages.

Seed 000's ``status`` is one of processing|completed|failed|error; the last three are final. These pure
functions are the one place that says so, for the poller, the SSE dialect and the GET and WebSocket routes.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import msgspec

from ..events import Complete, Error, Event, Progress

Final = Literal["completed", "failed", "error"]
FINAL: frozenset[str] = frozenset(get_args(Final))

PENDING = Progress("processing", "Task is pending")  # what a task says before its first status


class TrellisMessage(msgspec.Struct):
    status: str
    message: str
    data: str | None
    full_response: Any


def to_progress(data: dict[str, Any]) -> Progress:
    """PiAPI task data -> seed 000's message (statuses compared case-insensitively, as payloads vary)."""
    status = str(data.get("status", "")).lower()
    if status == "completed":
        output = data.get("output") or {}
        model_file = output.get("model_file") if isinstance(output, dict) else None
        return Progress("completed", "3D model is ready", model_file, data)
    if status == "failed":
        error = data.get("error") or {}
        message = (error.get("message") or error.get("raw_message")) if isinstance(error, dict) else None
        return Progress("failed", message or "Trellis task failed", None, data)
    meta = data.get("meta") or {}
    progress = meta.get("progress") if isinstance(meta, dict) else None
    message = f"Task is {status or 'pending'}" + (f" ({progress}%)" if isinstance(progress, int | float) else "")
    return Progress("processing", message, None, None)


def is_final(update: Progress) -> bool:
    return update.status in FINAL


def ends(event: Event) -> bool:
    """True for the last event a watcher of a Trellis log needs: a final status, or the log's end."""
    return isinstance(event, Complete | Error) or (isinstance(event, Progress) and is_final(event))


def trellis_message(update: Progress) -> TrellisMessage:
    return TrellisMessage(update.status, update.message, update.data, update.full_response)


def error_message(message: str) -> TrellisMessage:
    return TrellisMessage("error", message, None, None)


class StatusRenderer:
    """Seed 000's message for each event of a Trellis log, in order: every status, and an end without a final
    status (given up, interrupted) as ``status: error``; None for the rest."""

    def __init__(self) -> None:
        self.ended = False

    def render(self, event: Event) -> TrellisMessage | None:
        if isinstance(event, Progress):
            self.ended = is_final(event)
            return trellis_message(event)
        if isinstance(event, Error) and not self.ended:
            return error_message(event.message)
        return None
