"""Messages in the Anthropic format, the one every provider takes: a tagged union of content blocks.

Requests are checked against these types at the edge, so a provider never meets a block it cannot read;
unknown block types are a 422 naming the block, not an upstream error later.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import msgspec

CacheControl = dict[str, Any]


class Base64Source(msgspec.Struct, frozen=True, tag="base64", tag_field="type"):
    media_type: str
    data: str


class UrlSource(msgspec.Struct, frozen=True, tag="url", tag_field="type"):
    url: str


ImageSource = Base64Source | UrlSource


class TextBlock(msgspec.Struct, frozen=True, tag="text", tag_field="type", omit_defaults=True):
    text: str
    cache_control: CacheControl | None = None


class ImageBlock(msgspec.Struct, frozen=True, tag="image", tag_field="type", omit_defaults=True):
    source: ImageSource
    cache_control: CacheControl | None = None


class ToolUseBlock(msgspec.Struct, frozen=True, tag="tool_use", tag_field="type", omit_defaults=True):
    id: str
    name: str
    input: dict[str, Any]
    cache_control: CacheControl | None = None


class ToolResultBlock(msgspec.Struct, frozen=True, tag="tool_result", tag_field="type", omit_defaults=True):
    tool_use_id: str
    content: str | list[TextBlock | ImageBlock] = ""
    is_error: bool = False
    cache_control: CacheControl | None = None


class DocumentBlock(msgspec.Struct, frozen=True, tag="document", tag_field="type", omit_defaults=True):
    """A PDF or text document for Claude; its source is passed on as given (base64, url, text or content)."""

    source: dict[str, Any]
    title: str | None = None
    context: str | None = None
    citations: dict[str, Any] | None = None
    cache_control: CacheControl | None = None


class ThinkingBlock(msgspec.Struct, frozen=True, tag="thinking", tag_field="type", omit_defaults=True):
    """The model's own reasoning, sent back unchanged in a later turn (Claude checks the signature)."""

    thinking: str
    signature: str = ""


class RedactedThinkingBlock(msgspec.Struct, frozen=True, tag="redacted_thinking", tag_field="type"):
    data: str


Block = TextBlock | ImageBlock | DocumentBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock
Role = Literal["user", "assistant"]


class Message(msgspec.Struct, frozen=True):
    role: Role
    content: str | list[Block]


def user(text: str) -> Message:
    return Message("user", text)


def assistant(text: str) -> Message:
    return Message("assistant", text)


def blocks_of(content: str | list[Block]) -> list[Block]:
    return [TextBlock(content)] if isinstance(content, str) else content


def text_of(content: str | Sequence[Block]) -> str:
    """The text blocks of ``content``, joined (images, tool blocks and thinking left out)."""
    if isinstance(content, str):
        return content
    return "".join(block.text for block in content if isinstance(block, TextBlock))


class Turns:
    """Messages for the Messages API, built turn by turn: consecutive turns of one role are merged (it wants
    them to alternate), system texts are gathered into one prompt."""

    def __init__(self) -> None:
        self.system: list[str] = []
        self._turns: list[tuple[Role, list[Block]]] = []

    def add(self, role: Role, blocks: list[Block]) -> None:
        if not blocks:
            return
        if self._turns and self._turns[-1][0] == role:
            self._turns[-1][1].extend(blocks)
        else:
            self._turns.append((role, blocks))

    @property
    def last_role(self) -> Role | None:
        return self._turns[-1][0] if self._turns else None

    def messages(self) -> list[Message]:
        return [Message(role, blocks) for role, blocks in self._turns]

    def system_prompt(self) -> str | None:
        return "\n\n".join(text for text in self.system if text) or None
