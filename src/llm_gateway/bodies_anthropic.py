"""The Anthropic Messages API's bodies (``POST /v1/messages`` and ``…/count_tokens``) and their GenerationRequest.

Fields the gateway does not carry (``service_tier``, ``container``, ``mcp_servers``, …) are ignored, as unknown
fields are everywhere; a content block it cannot carry is a 400 naming the block (content.py).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

from .bodies import MaxTokens, Model, Temperature
from .content import Message, TextBlock
from .providers import GenerationRequest

Probability = Annotated[float, Meta(ge=0, le=1)]


class MessageCountTokensParams(msgspec.Struct, kw_only=True):
    model: Model
    messages: Annotated[list[Message], Meta(min_length=1)]
    system: str | list[TextBlock] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None


class MessageCreateParams(MessageCountTokensParams, kw_only=True):
    max_tokens: MaxTokens
    stream: bool = False
    stop_sequences: list[str] | None = None
    metadata: dict[str, Any] | None = None
    temperature: Temperature | None = None
    top_p: Probability | None = None
    top_k: Annotated[int, Meta(ge=0)] | None = None


def from_anthropic(body: MessageCreateParams | MessageCountTokensParams) -> GenerationRequest:
    """The request as the client wrote it, the model name included (the registry resolves it)."""
    sampling: dict[str, Any] = {}
    if isinstance(body, MessageCreateParams):
        sampling = {
            "max_tokens": body.max_tokens,
            "stop_sequences": body.stop_sequences or None,
            "metadata": body.metadata or None,
            "temperature": body.temperature,
            "top_p": body.top_p,
            "top_k": body.top_k,
        }
    return GenerationRequest(
        model=body.model,
        messages=body.messages,
        system=body.system or None,
        tools=body.tools or None,
        tool_choice=body.tool_choice or None,
        thinking=body.thinking or None,
        **sampling,
    )
