"""Settings: one frozen value, read once from the environment (and an optional ``.env`` file)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from .tenants import parse_keys

PositiveInt = Annotated[int, Meta(ge=1)]
PositiveFloat = Annotated[float, Meta(gt=0)]
Port = Annotated[int, Meta(ge=0, le=65535)]
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


class ConfigError(ValueError):
    """A setting is missing or has a bad value; the message names it."""


class Settings(msgspec.Struct, frozen=True, kw_only=True, rename="upper"):
    api_host: str = "0.0.0.0"
    api_port: Port = 8000
    anthropic_api_key: str | None = None
    anthropic_auth_token: str | None = None
    anthropic_base_url: str | None = None
    claude_model: str = "claude-sonnet-4-6"
    openai_api_key: str | None = None
    openai_base_url: str = "https://api.openai.com/v1"
    cerebras_api_key: str | None = None
    cerebras_base_url: str = "https://api.cerebras.ai/v1"
    google_api_key: str | None = None
    google_base_url: str = "https://generativelanguage.googleapis.com/v1beta/openai/"
    redis_url: str | None = None
    redis_cluster: bool = False
    redis_key_prefix: str = "llmgw:"
    workers: PositiveInt = 1
    stream_ttl_seconds: PositiveInt = 3600
    store_max_bytes: PositiveInt = 256 * 1024 * 1024
    max_concurrent_tasks: PositiveInt = 256
    max_body_bytes: PositiveInt = 1024 * 1024
    task_lease_seconds: PositiveFloat = 5.0
    upstream_idle_timeout: PositiveFloat = 60.0
    upstream_max_retries: Annotated[int, Meta(ge=0, le=10)] = 2
    shutdown_grace_seconds: Annotated[float, Meta(ge=0)] = 10.0
    store_outage_grace: PositiveFloat = 30.0
    cache_ttl_seconds: PositiveInt = 900
    conversation_ttl_seconds: PositiveInt = 86400
    conversation_max_messages: Annotated[int, Meta(ge=2)] = 100
    trellis_api_key: str | None = None
    trellis_base_url: str = "https://api.piapi.ai"
    trellis_poll_interval: PositiveFloat = 2.0
    trellis_max_wait: PositiveFloat = 1800.0
    trellis_webhook_secret: str | None = None
    trellis_timeout: PositiveFloat = 15.0
    cors_origins: str = "*"
    gateway_api_keys: str | None = None
    tenant_max_concurrent: PositiveInt | None = None
    tenant_rpm: PositiveInt | None = None
    log_level: str = "info"
    log_format: Literal["text", "json"] = "text"

    def __post_init__(self) -> None:
        if problems := self.problems():
            raise ValueError("; ".join(problems))

    def problems(self) -> list[str]:
        """What is wrong across settings (each one's own type and range are checked by msgspec)."""
        problems = []
        if self.log_level.lower() not in LOG_LEVELS:
            problems.append(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")
        if self.workers > 1 and not self.redis_url:
            problems.append(
                f"WORKERS={self.workers} needs REDIS_URL: the embedded store lives in one process, "
                "so several workers would not see each other's tasks"
            )
        schemes = ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")
        if self.redis_url and not self.redis_url.startswith(schemes):
            problems.append(
                "REDIS_URL must start with redis://, rediss://, unix://, redis+cluster:// or rediss+cluster://"
            )
        if self.redis_cluster and not (self.redis_url or "").startswith(schemes[:2] + schemes[3:]):
            problems.append("REDIS_CLUSTER=1 needs a REDIS_URL of redis:// or rediss:// (a node of the cluster)")
        try:
            parse_keys(self.gateway_api_keys or "")
        except ValueError as exc:
            problems.append(str(exc))
        return problems

    @property
    def cors_origin_list(self) -> list[str]:
        return split_list(self.cors_origins)

    @property
    def client_api_keys(self) -> list[str]:
        return list(self.client_tenants)

    @property
    def client_tenants(self) -> dict[str, str]:
        """Client key -> tenant name (empty: no keys, one anonymous tenant)."""
        return parse_keys(self.gateway_api_keys or "")


def split_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def parse_env_file(text: str) -> dict[str, str]:
    """Parse ``KEY=value`` lines (``export``, quotes and ``#`` comments allowed)."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[key.strip()] = value
    return values


def from_env(environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env") -> Settings:
    """Build settings from ``environ`` over ``env_file``; raise ConfigError naming each bad value."""
    merged: dict[str, str] = {}
    if env_file is not None and Path(env_file).is_file():
        merged.update(parse_env_file(Path(env_file).read_text(encoding="utf-8")))
    merged.update(os.environ if environ is None else environ)
    fields = {f.upper() for f in Settings.__struct_fields__}
    # An empty value means "unset", as in most .env conventions.
    known = {key: value for key, value in merged.items() if key in fields and value != ""}
    try:
        return msgspec.convert(known, Settings, strict=False)
    except msgspec.ValidationError as exc:
        problems = _field_problems(known) or [describe_validation_error(exc)]
        raise ConfigError(f"invalid setting{'s' if len(problems) > 1 else ''}: {'; '.join(problems)}") from None


def _field_problems(known: dict[str, str]) -> list[str]:
    """Every bad value, each checked on its own (msgspec stops at the first), then the rules across settings."""
    fields = {field.encode_name: field for field in msgspec.structs.fields(Settings)}
    problems = []
    valid: dict[str, str] = {}
    for name, value in known.items():
        try:
            msgspec.convert({name: value}, Settings, strict=False)
            valid[name] = value
        except msgspec.ValidationError as exc:
            if name in fields and " - at `$." in str(exc):
                problems.append(describe_validation_error(exc))
            else:
                valid[name] = value  # only wrong together with others: reported below
    try:
        msgspec.convert(valid, Settings, strict=False)
    except msgspec.ValidationError as exc:
        problems.append(describe_validation_error(exc))
    return problems


def describe_validation_error(exc: msgspec.ValidationError) -> str:
    """Turn msgspec's ``Expected int >= 1, got 0 - at `$.WORKERS``` into ``WORKERS: expected int >= 1, got 0``."""
    message = str(exc)
    if " - at `$." in message:
        what, _, where = message.rpartition(" - at `$.")
        return f"{where.rstrip('`')}: {what[:1].lower()}{what[1:]}"
    return message
