"""Which provider serves a model name."""

from __future__ import annotations

from ..config import Settings
from ..errors import GatewayError
from .anthropic import AnthropicProvider
from .base import Provider


class Providers:
    def __init__(self, claude: Provider | None) -> None:
        self.claude = claude

    @classmethod
    def from_settings(cls, settings: Settings) -> Providers:
        claude = None
        if settings.anthropic_api_key or settings.anthropic_auth_token:
            claude = AnthropicProvider.create(
                api_key=settings.anthropic_api_key,
                auth_token=settings.anthropic_auth_token,
                base_url=settings.anthropic_base_url,
                idle_timeout=settings.upstream_idle_timeout,
                max_retries=settings.upstream_max_retries,
            )
        return cls(claude)

    def resolve(self, model: str) -> tuple[Provider, str]:
        """The provider for ``model`` and the model name to send it."""
        if self.claude is None:
            raise GatewayError("unavailable", "Claude is not configured: set ANTHROPIC_API_KEY or ANTHROPIC_AUTH_TOKEN")
        return self.claude, model

    async def close(self) -> None:
        if self.claude is not None:
            await self.claude.close()
