"""Which provider serves a model name: ``openai/x``, ``cerebras/x`` and ``gemini/x`` go to that vendor as ``x``,
anything else to Claude."""

from __future__ import annotations

from collections.abc import Mapping

from ..config import Settings
from ..errors import GatewayError, InvalidRequest
from .anthropic import AnthropicProvider
from .base import Provider
from .openai import OpenAICompatibleProvider

# Model prefix -> the setting holding that vendor's key.
VENDOR_KEYS = {"openai": "OPENAI_API_KEY", "cerebras": "CEREBRAS_API_KEY", "gemini": "GOOGLE_API_KEY"}


class Providers:
    def __init__(self, claude: Provider | None, vendors: Mapping[str, Provider] | None = None) -> None:
        self.claude = claude
        self.vendors = dict(vendors or {})

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
        vendors: dict[str, Provider] = {}
        for vendor, api_key, base_url in (
            ("openai", settings.openai_api_key, settings.openai_base_url),
            ("cerebras", settings.cerebras_api_key, settings.cerebras_base_url),
            ("gemini", settings.google_api_key, settings.google_base_url),
        ):
            if api_key:
                vendors[vendor] = OpenAICompatibleProvider(
                    base_url,
                    api_key,
                    idle_timeout=settings.upstream_idle_timeout,
                    max_retries=settings.upstream_max_retries,
                    # OpenAI's reasoning models refuse max_tokens; the compatible APIs document max_tokens.
                    max_tokens_field="max_completion_tokens" if vendor == "openai" else "max_tokens",
                )
        return cls(claude, vendors)

    def resolve(self, model: str) -> tuple[Provider, str]:
        """The provider for ``model`` and the model name to send it."""
        vendor, slash, upstream_model = model.partition("/")
        if slash and vendor in VENDOR_KEYS:
            provider = self.vendors.get(vendor)
            if provider is None:
                raise GatewayError("unavailable", f"{VENDOR_KEYS[vendor]} is not set: {vendor}/ models are unavailable")
            if not upstream_model:
                raise InvalidRequest(f"model {model!r} names no {vendor} model")
            return provider, upstream_model
        if self.claude is None:
            raise GatewayError("unavailable", "Claude is not configured: set ANTHROPIC_API_KEY or ANTHROPIC_AUTH_TOKEN")
        return self.claude, model

    def configured(self) -> dict[str, bool]:
        """Which upstreams have credentials (for /health)."""
        return {"claude": self.claude is not None} | {vendor: vendor in self.vendors for vendor in VENDOR_KEYS}

    async def close(self) -> None:
        for provider in (self.claude, *self.vendors.values()):
            if provider is not None:
                await provider.close()
