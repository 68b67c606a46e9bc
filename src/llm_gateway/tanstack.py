"""TanStack AI requests (legacy ``messages`` bodies and AG-UI ``RunAgentInput``) -> the Anthropic message format.

Pure functions (wire-formats §3.1, §3.3): system messages become the system prompt, assistant ``toolCalls``
become ``tool_use`` blocks, ``tool`` rows become ``tool_result`` blocks in a user turn, and consecutive turns
of one role are merged, as the Messages API wants them to alternate. Reasoning rows are left out.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .content import (
    Base64Source,
    Block,
    ImageBlock,
    Message,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
    Turns,
    UrlSource,
    text_of,
)
from .errors import InvalidRequest


class ToolCallFunction(msgspec.Struct):
    name: str
    arguments: str | dict[str, Any] = "{}"


class ClientToolCall(msgspec.Struct):
    id: str
    function: ToolCallFunction
    type: str = "function"


class ClientMessage(msgspec.Struct, kw_only=True):
    role: str
    content: str | list[dict[str, Any]] | None = None
    toolCalls: list[ClientToolCall] | None = None
    toolCallId: str | None = None


def _blocks(content: str | list[dict[str, Any]] | None) -> list[Block]:
    if content is None:
        return []
    if isinstance(content, str):
        return [TextBlock(content)] if content else []
    blocks: list[Block] = []
    for part in content:
        kind = part.get("type")
        if kind == "text" and part.get("text"):
            blocks.append(TextBlock(str(part["text"])))
        elif kind == "image" and isinstance(source := part.get("source"), dict):
            if source.get("type") == "url":
                blocks.append(ImageBlock(UrlSource(str(source.get("value", "")))))
            elif source.get("type") in ("data", "base64"):
                media_type = source.get("mimeType") or source.get("media_type") or "image/png"
                data = source.get("value") or source.get("data", "")
                blocks.append(ImageBlock(Base64Source(str(media_type), str(data))))
    return blocks


def _arguments(raw: str | dict[str, Any], path: str) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    try:
        value = msgspec.json.decode(raw or "{}")
    except msgspec.DecodeError:
        raise InvalidRequest("tool call arguments are not JSON", detail=[{"loc": ["body", *path.split(".")]}]) from None
    if not isinstance(value, dict):
        raise InvalidRequest("tool call arguments must be a JSON object", detail=[{"loc": ["body", *path.split(".")]}])
    return value


def _text_of(content: str | list[dict[str, Any]] | None) -> str:
    return text_of(_blocks(content))


def to_anthropic(messages: list[ClientMessage]) -> tuple[list[Message], str | None]:
    """(messages, system) for the Messages API."""
    turns = Turns()

    for i, message in enumerate(messages):
        if message.role == "system":
            turns.system.append(_text_of(message.content))
        elif message.role == "user":
            turns.add("user", _blocks(message.content))
        elif message.role == "assistant":
            blocks = _blocks(message.content)
            for j, call in enumerate(message.toolCalls or ()):
                arguments = _arguments(call.function.arguments, f"messages.{i}.toolCalls.{j}.function.arguments")
                blocks.append(ToolUseBlock(call.id, call.function.name, arguments))
            turns.add("assistant", blocks)
        elif message.role == "tool":
            turns.add("user", [ToolResultBlock(message.toolCallId or "", _text_of(message.content))])
        # "reasoning" rows and unknown roles carry nothing the Messages API takes back.
    if turns.last_role != "user":
        raise InvalidRequest(
            "the conversation must end with a user message or tool results",
            detail=[{"loc": ["body", "messages"], "msg": "no user turn to answer"}],
            status=422,
        )
    return turns.messages(), turns.system_prompt()


def to_anthropic_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Client tools (AG-UI ``{name, description, parameters}`` or OpenAI-style ``{function: {...}}``)."""
    converted = []
    for i, tool in enumerate(tools or ()):
        spec = tool.get("function", tool)
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
            raise InvalidRequest("every tool needs a name", detail=[{"loc": ["body", "tools", str(i)]}], status=422)
        name = spec["name"]
        schema = spec.get("parameters") or spec.get("inputSchema") or spec.get("input_schema") or {"type": "object"}
        entry: dict[str, Any] = {"name": name, "input_schema": schema}
        if spec.get("description"):
            entry["description"] = spec["description"]
        converted.append(entry)
    return converted or None
