"""PiAPI's task API (the Trellis image-to-3D tasks) over httpx."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import httpx
import msgspec

from ..aio import raise_if_cancelling
from ..errors import GatewayError

# PiAPI's task ids are UUIDs; anything else is refused before it reaches PiAPI's URL (``..`` would climb it).
_PIAPI_ID = re.compile(r"[A-Za-z0-9-]{1,64}")


def is_piapi_id(value: str) -> bool:
    return _PIAPI_ID.fullmatch(value) is not None


class PiAPIClient:
    """PiAPI's task API over httpx; PiAPI's 4xx on create pass through, 5xx, timeouts and garbage do not."""

    def __init__(self, base_url: str, api_key: str | None, *, timeout: float = 15.0) -> None:
        headers = {"x-api-key": api_key} if api_key else {}
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)

    async def close(self) -> None:
        await self._http.aclose()

    async def create(self, body: bytes) -> tuple[int, Any]:
        """PiAPI's status and JSON answer; raises upstream_* for 5xx, timeouts and bodies that are not JSON."""
        response = await self._request("POST", "/api/v1/task", content=body)
        return response.status_code, self._json(response)

    async def get(self, task_id: str) -> dict[str, Any] | None:
        """The task's data, or None if PiAPI does not know it."""
        response = await self._request("GET", f"/api/v1/task/{quote(task_id, safe='')}")
        if response.status_code == 404:
            return None
        answer = self._json(response)
        if response.status_code >= 400 or not isinstance(answer, dict) or answer.get("code") not in (200, None):
            if response.status_code in (400, 404) or (isinstance(answer, dict) and answer.get("code") == 404):
                return None
            raise GatewayError("upstream_error", f"PiAPI answered {response.status_code}")
        data = answer.get("data")
        if not isinstance(data, dict):
            raise GatewayError("upstream_error", "PiAPI answered without task data")
        return data

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, headers={"content-type": "application/json"}, **kwargs)
        except httpx.TimeoutException:
            raise_if_cancelling()
            raise GatewayError("upstream_timeout", "PiAPI did not answer in time") from None
        except httpx.HTTPError as exc:
            raise_if_cancelling()
            raise GatewayError("upstream_error", f"PiAPI unreachable: {type(exc).__name__}") from None
        if response.status_code >= 500:
            raise GatewayError("upstream_error", f"PiAPI answered {response.status_code}")
        if response.status_code in (401, 403):
            raise GatewayError("upstream_auth", "PiAPI refused TRELLIS_API_KEY")
        return response

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        try:
            return msgspec.json.decode(response.content)
        except msgspec.DecodeError:
            raise GatewayError("upstream_error", "PiAPI answered something that is not JSON") from None
