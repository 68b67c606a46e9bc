"""PiAPI Trellis (image to 3D): the PiAPI client, the cluster-wide tracker, and the status mapping."""

from __future__ import annotations

from .client import PiAPIClient, is_piapi_id
from .status import (
    FINAL,
    PENDING,
    Final,
    StatusRenderer,
    TrellisMessage,
    error_message,
    is_final,
    to_progress,
    trellis_message,
)
from .tracker import TrellisTracker, log_id

__all__ = [
    "FINAL",
    "Final",
    "PENDING",
    "PiAPIClient",
    "StatusRenderer",
    "TrellisMessage",
    "TrellisTracker",
    "error_message",
    "is_final",
    "is_piapi_id",
    "log_id",
    "to_progress",
    "trellis_message",
]
