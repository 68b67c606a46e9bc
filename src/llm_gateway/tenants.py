"""Tenants: each client key is one, and everything a request creates belongs to its tenant (API.md §1).

Ids live in per-tenant namespaces: inside the gateway a client's id ``haiku-1`` of tenant ``acme`` is
``acme/haiku-1`` (``scoped``), and it goes back out as ``haiku-1`` (``public``). Client ids cannot hold a
``/`` (``TaskId``) and tenant names cannot either, so no id of one tenant can name another's; a tenant asking
for another's id asks for one that never existed. Without keys there is one anonymous tenant, whose ids are
unprefixed (as before tenants existed).

Per-tenant limits are counted in the store, so they hold across replicas: ``TENANT_MAX_CONCURRENT``
generations at once (slots leased like tasks, so a dead replica's slots come back) and ``TENANT_RPM``
requests in each clock minute.
"""

from __future__ import annotations

import hashlib
import re
import time

from starlette.requests import HTTPConnection

from . import keys
from .errors import GatewayError, NotFound
from .store import Values

ANONYMOUS = ""
SEPARATOR = "/"
NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
SCOPE_KEY = "llm_gateway.tenant"
# A client's task id (API.md §1): no separator, nothing a header or path must escape. ``(?!\n)$`` because a
# bare ``$`` also matches before a trailing newline.
TASK_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}(?!\n)$"
_TASK_ID = re.compile(TASK_ID_PATTERN)


def parse_keys(value: str) -> dict[str, str]:
    """``name=key`` or bare ``key`` entries, comma-separated -> {key: tenant name}; ValueError naming a bad one.

    A bare key's tenant is named from its hash, so it stays the same tenant while the key does. Two keys may
    name one tenant (a key being rotated).
    """
    tenants: dict[str, str] = {}
    for i, entry in enumerate(item.strip() for item in value.split(",")):
        if not entry:
            continue
        name, equals, key = entry.partition("=")
        if not equals:
            name, key = "k" + hashlib.sha256(entry.encode()).hexdigest()[:12], entry
        name, key = name.strip(), key.strip()
        if not NAME.fullmatch(name) or not key:
            raise ValueError(f"GATEWAY_API_KEYS entry {i + 1} must be name=key (name: 1-64 of A-Z a-z 0-9 _ . -)")
        tenants[key] = name
    return tenants


def scoped(tenant: str, public_id: str) -> str:
    return f"{tenant}{SEPARATOR}{public_id}" if tenant else public_id


def public(internal_id: str) -> str:
    return internal_id.rpartition(SEPARATOR)[2]


def owner_of(internal_id: str) -> str:
    return internal_id.rpartition(SEPARATOR)[0]


def tenant_of(connection: HTTPConnection) -> str:
    """The tenant the client key of this request or socket belongs to (set by the key middleware)."""
    tenant: str = connection.scope.get(SCOPE_KEY, ANONYMOUS)
    return tenant


def is_task_id(value: str) -> bool:
    return _TASK_ID.match(value) is not None


def path_task_id(connection: HTTPConnection, name: str = "task_id") -> str:
    """The scoped id of the task a path names; an id no client could have made is unknown (404), as any other."""
    task_id: str = connection.path_params[name]
    if not is_task_id(task_id):
        raise NotFound(f"no task {task_id[:128]!r} (unknown or expired)")
    return scoped(tenant_of(connection), task_id)


class TenantLimits:
    """Per-tenant request rate and concurrent generations, counted in the store (exact across replicas)."""

    def __init__(self, values: Values, *, max_concurrent: int | None, rpm: int | None, slot_ttl: float) -> None:
        self.values = values
        self.max_concurrent = max_concurrent
        self.rpm = rpm
        self.slot_ttl = slot_ttl

    @property
    def limits_concurrency(self) -> bool:
        return self.max_concurrent is not None

    async def count_request(self, tenant: str) -> None:
        """Count one request of ``tenant``; 429 rate_limited past TENANT_RPM in this minute."""
        if self.rpm is None:
            return
        now = time.time()
        minute = int(now // 60)
        count = await self.values.count_in_window(keys.tenant_rpm(f"{tenant}:{minute}"), ttl=61.0)
        if count > self.rpm:
            raise GatewayError(
                "rate_limited", f"over TENANT_RPM ({self.rpm} requests a minute)", retry_after=60 - now % 60
            )

    async def claim(self, internal_task_id: str) -> None:
        """A generation slot for the task's tenant; 429 rate_limited at TENANT_MAX_CONCURRENT."""
        if self.max_concurrent is None:
            return
        key = keys.tenant_running(owner_of(internal_task_id))
        claimed = await self.values.claim_slot(key, internal_task_id, limit=self.max_concurrent, ttl=self.slot_ttl)
        if not claimed:
            message = f"over TENANT_MAX_CONCURRENT ({self.max_concurrent} generations at once)"
            raise GatewayError("rate_limited", message, retry_after=1)

    async def renew(self, internal_task_ids: list[str]) -> None:
        if self.max_concurrent is None:
            return
        for task_id in internal_task_ids:
            key = keys.tenant_running(owner_of(task_id))
            await self.values.claim_slot(key, task_id, limit=self.max_concurrent, ttl=self.slot_ttl)

    async def release(self, internal_task_id: str) -> None:
        if self.max_concurrent is None:
            return
        await self.values.release_slot(keys.tenant_running(owner_of(internal_task_id)), internal_task_id)
