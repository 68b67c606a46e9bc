"""The models the gateway lists at ``GET /v1/models``, in OpenAI's shape or Anthropic's; pure.

Any model id is accepted (a ``claude-…`` one goes to Claude, ``openai/x`` to OpenAI as ``x`` …): the list is
for clients that pick from it, so it holds ``CLAUDE_MODEL``, a few current Claude ids (wire-formats §1.5), and
each vendor's well-known models only when that vendor's key is set. The gateway does not know release dates:
``created`` is 0 and ``created_at`` the epoch.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from .config import Settings

CLAUDE_MODELS = ("claude-opus-4-7", "claude-sonnet-4-6", "claude-opus-4-6", "claude-haiku-4-5", "claude-sonnet-4-5")
VENDOR_MODELS = {
    "openai": ("openai/gpt-5", "openai/gpt-5-mini", "openai/gpt-4.1", "openai/gpt-4o", "openai/gpt-4o-mini"),
    "cerebras": ("cerebras/gpt-oss-120b", "cerebras/llama-3.3-70b", "cerebras/qwen-3-32b"),
    "gemini": ("gemini/gemini-2.5-pro", "gemini/gemini-2.5-flash", "gemini/gemini-2.5-flash-lite"),
}
OWNERS = {"openai": "openai", "cerebras": "cerebras", "gemini": "google"}
EPOCH = "1970-01-01T00:00:00Z"


class OpenAIModel(msgspec.Struct):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class OpenAIModelList(msgspec.Struct):
    object: Literal["list"]
    data: list[OpenAIModel]


class AnthropicModel(msgspec.Struct):
    type: Literal["model"]
    id: str
    display_name: str
    created_at: str


class AnthropicModelList(msgspec.Struct):
    data: list[AnthropicModel]
    has_more: bool
    first_id: str | None
    last_id: str | None


def served_models(settings: Settings) -> list[tuple[str, str]]:
    """(model id, owner) of each listed model, CLAUDE_MODEL first."""
    models: list[tuple[str, str]] = []
    if settings.anthropic_api_key or settings.anthropic_auth_token:
        models += [(model, "anthropic") for model in dict.fromkeys((settings.claude_model, *CLAUDE_MODELS))]
    keys = {"openai": settings.openai_api_key, "cerebras": settings.cerebras_api_key, "gemini": settings.google_api_key}
    for vendor, key in keys.items():
        if key:
            models += [(model, OWNERS[vendor]) for model in VENDOR_MODELS[vendor]]
    return models


def openai_models(models: list[tuple[str, str]]) -> OpenAIModelList:
    return OpenAIModelList("list", [OpenAIModel(model, "model", 0, owner) for model, owner in models])


def anthropic_models(models: list[tuple[str, str]]) -> AnthropicModelList:
    data = [AnthropicModel("model", model, display_name(model), EPOCH) for model, _ in models]
    return AnthropicModelList(data, False, data[0].id if data else None, data[-1].id if data else None)


def display_name(model: str) -> str:
    """``claude-sonnet-4-6`` -> ``Claude Sonnet 4.6`` (a date suffix left out); ``openai/gpt-4o`` stays as it is."""
    if "/" in model:
        return model
    words, numbers = [], []
    for part in model.split("-"):
        if not part.isdigit():
            words.append(part)
        elif len(part) <= 2:
            numbers.append(part)
    return " ".join([*(word.capitalize() for word in words), ".".join(numbers)]).strip()
