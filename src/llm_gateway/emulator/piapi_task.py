"""An emulated PiAPI task (Trellis, image -> 3D), steered by an extra ``"emulator"`` object in the create body,
which the gateway forwards untouched (PiAPI ignores unknown fields). Its status follows the time elapsed since its
creation:

    pending_s=1.0       pending for this long, then
    staged=false        if true, "staged" for ``staged_s`` (default 1.0), then
    processing_s=2.0    "processing" for this long, then
    outcome             "completed" (output: `piapi_model_url` and friends) | "failed" (error.message "bad image")
    progress_steps=N    if N > 0, ``data.meta.progress`` rises 0..100 in N steps while processing (undocumented!)
    create_fault        "500" | "400" -> that status with a PiAPI body; "garbage" -> 200 ``<html>oops``;
                        "timeout" -> answer (and create the task) after ``timeout_s`` (default 30), unless the
                        client leaves first
    get_fault           "500" | "garbage" | "timeout", on the task's first ``get_fault_count`` GETs (default: all)
    webhook_on_finish   if true, POST the webhook when the task ends, whether or not anybody polls

- PiAPI documents no progress field: it sits at ``data.meta.progress`` only when ``progress_steps`` asks for it.
- ``config.webhook_config.secret`` is blanked in task data, as in PiAPI's example response; the webhook still
  carries it in ``x-webhook-secret``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Annotated, Any, Literal

import msgspec

_UNSET_TIME = "0001-01-01T00:00:00Z"  # what PiAPI shows for a time not reached yet
_PIAPI_FILES = "https://img.theapi.app/temp/"


def piapi_model_url(task_id: str) -> str:
    """The GLB URL in ``output.model_file`` of a completed emulated task (not served by anything)."""
    return f"{_PIAPI_FILES}{task_id}/model.glb"


def _piapi_output(task_id: str) -> dict[str, str]:
    return {
        "model_file": piapi_model_url(task_id),
        "combined_video": f"{_PIAPI_FILES}{task_id}/combined_video.mp4",
        "no_background_image": f"{_PIAPI_FILES}{task_id}/no_background_image.png",
    }


class _PiapiOptions(msgspec.Struct, forbid_unknown_fields=True):
    """The ``"emulator"`` object of a create-task body: see the module docstring."""

    pending_s: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    staged: bool = False
    staged_s: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    processing_s: Annotated[float, msgspec.Meta(ge=0)] = 2.0
    outcome: Literal["completed", "failed"] = "completed"
    progress_steps: Annotated[int, msgspec.Meta(ge=0)] = 0
    create_fault: Literal["500", "400", "garbage", "timeout"] | None = None
    get_fault: Literal["500", "garbage", "timeout"] | None = None
    get_fault_count: Annotated[int, msgspec.Meta(ge=0)] | None = None
    timeout_s: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    webhook_on_finish: bool = False


class _WebhookConfig(msgspec.Struct):
    endpoint: str = ""
    secret: str = ""


class _TaskConfig(msgspec.Struct):
    service_mode: str = ""
    webhook_config: _WebhookConfig | None = None


class TaskRequest(msgspec.Struct):
    model: str
    task_type: str
    input: dict[str, Any]
    config: _TaskConfig | None = None
    emulator: _PiapiOptions = msgspec.field(default_factory=_PiapiOptions)


task_request_decoder = msgspec.json.Decoder(TaskRequest)


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


@dataclasses.dataclass
class PiapiTask:
    """One task: its status is a pure function of the time elapsed since ``created`` (`data`)."""

    id: str
    request: TaskRequest
    created_at: float = dataclasses.field(default_factory=time.time)
    created: float = dataclasses.field(default_factory=time.monotonic)
    gets: int = 0

    @property
    def options(self) -> _PiapiOptions:
        return self.request.emulator

    @property
    def starts_after(self) -> float:
        """Seconds from creation to "processing"."""
        return self.options.pending_s + (self.options.staged_s if self.options.staged else 0.0)

    @property
    def ends_after(self) -> float:
        return self.starts_after + self.options.processing_s

    @property
    def webhook(self) -> _WebhookConfig | None:
        config = self.request.config
        return config.webhook_config if config is not None else None

    def elapsed(self) -> float:
        return time.monotonic() - self.created

    def status(self, elapsed: float) -> str:
        if elapsed < self.options.pending_s:
            return "pending"
        if elapsed < self.starts_after:
            return "staged"
        if elapsed < self.ends_after:
            return "processing"
        return self.options.outcome

    def progress(self, elapsed: float) -> int:
        """0 until processing, then up in ``progress_steps`` steps: 0, 100/N, …, 100(N-1)/N; 100 once completed."""
        steps, status = self.options.progress_steps, self.status(elapsed)
        if status == "completed":
            return 100
        if status in ("pending", "staged"):
            return 0
        duration = self.options.processing_s
        fraction = (elapsed - self.starts_after) / duration if duration else 1.0
        return 100 * min(steps - 1, int(fraction * steps)) // steps

    def data(self, elapsed: float) -> dict[str, Any]:
        """The task's ``data`` as PiAPI's get-task answers it, ``elapsed`` seconds after creation."""
        status = self.status(elapsed)
        started = elapsed >= self.starts_after
        ended = elapsed >= self.ends_after
        meta: dict[str, Any] = {
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.created_at + self.starts_after) if started else _UNSET_TIME,
            "ended_at": _iso(self.created_at + self.ends_after) if ended else _UNSET_TIME,
            "usage": {"type": "llm", "frozen": 0, "consume": 400000},  # PiAPI's documented example
            "is_using_private_pool": False,
        }
        if self.options.progress_steps:
            # PiAPI documents no progress field (wire-formats §4, UNVERIFIED): this one is the emulator's own.
            meta["progress"] = self.progress(elapsed)
        error: dict[str, Any] = {"code": 0, "raw_message": "", "message": "", "detail": None}
        if status == "failed":
            error = {"code": 10000, "raw_message": "trellis failed: bad image", "message": "bad image", "detail": None}
        config = self.request.config or _TaskConfig()
        hook = config.webhook_config or _WebhookConfig()
        return {
            "task_id": self.id,
            "model": self.request.model,
            "task_type": self.request.task_type,
            "status": status,
            # The secret is blanked, as in PiAPI's example response to a request that had one.
            "config": {
                "service_mode": config.service_mode,
                "webhook_config": {"endpoint": hook.endpoint, "secret": ""},
            },
            "input": self.request.input,
            "output": _piapi_output(self.id) if status == "completed" else None,
            "meta": meta,
            "detail": None,
            "logs": [],
            "error": error,
        }
