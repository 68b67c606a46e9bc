"""Anthropic-format requests -> OpenAI chat-completions bodies (wire-formats §2); pure functions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from ..content import (
    Base64Source,
    Block,
    ImageBlock,
    Message,
    RedactedThinkingBlock,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
    UrlSource,
    text_of,
)
from ..errors import InvalidRequest
from .base import GenerationRequest

_encode = msgspec.json.Encoder().encode


def openai_body(request: GenerationRequest, *, max_tokens_field: str = "max_tokens") -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": request.model,
        "messages": openai_messages(request),
        "stream": True,
        "stream_options": {"include_usage": True},
        max_tokens_field: request.max_tokens,
    }
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop_sequences:
        body["stop"] = request.stop_sequences
    # top_k, thinking and metadata have no common counterpart across the OpenAI-compatible vendors: left out.
    if request.tools:
        body["tools"] = openai_tools(request.tools)
        if request.tool_choice:
            if (choice := openai_tool_choice(request.tool_choice)) is not None:
                body["tool_choice"] = choice
            if request.tool_choice.get("disable_parallel_tool_use"):
                body["parallel_tool_calls"] = False
    return body


def openai_messages(request: GenerationRequest) -> list[dict[str, Any]]:
    """The system prompt first, then each turn; a user turn's tool results become ``tool`` messages before it."""
    messages: list[dict[str, Any]] = []
    system = request.system if isinstance(request.system, str) else text_of(request.system or [])
    if system:
        messages.append({"role": "system", "content": system})
    for message in request.messages:
        if message.role == "assistant":
            messages.append(_assistant_message(message))
        else:
            messages.extend(_user_messages(message))
    return messages


def openai_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    converted = []
    for tool in tools:
        function: dict[str, Any] = {"name": tool.get("name", "")}
        if tool.get("description"):
            function["description"] = tool["description"]
        function["parameters"] = tool.get("input_schema") or {"type": "object", "properties": {}}
        converted.append({"type": "function", "function": function})
    return converted


def openai_tool_choice(choice: Mapping[str, Any]) -> str | dict[str, Any] | None:
    match choice.get("type"):
        case "auto":
            return "auto"
        case "any":
            return "required"
        case "none":
            return "none"
        case "tool":
            return {"type": "function", "function": {"name": choice.get("name", "")}}
    return None


def _user_messages(message: Message) -> list[dict[str, Any]]:
    if isinstance(message.content, str):
        return [{"role": "user", "content": message.content}]
    results = [block for block in message.content if isinstance(block, ToolResultBlock)]
    messages: list[dict[str, Any]] = [
        {"role": "tool", "tool_call_id": block.tool_use_id, "content": _tool_result(block)} for block in results
    ]
    parts = [_part(block) for block in message.content if not isinstance(block, ToolResultBlock)]
    if len(parts) == 1 and parts[0]["type"] == "text":
        messages.append({"role": "user", "content": parts[0]["text"]})
    elif parts or not results:
        messages.append({"role": "user", "content": parts or ""})
    return messages


def _part(block: Block) -> dict[str, Any]:
    match block:
        case TextBlock(text=text):
            return {"type": "text", "text": text}
        case ImageBlock(source=Base64Source(media_type=media_type, data=data)):
            return {"type": "image_url", "image_url": {"url": f"data:{media_type};base64,{data}"}}
        case ImageBlock(source=UrlSource(url=url)):
            return {"type": "image_url", "image_url": {"url": url}}
    raise InvalidRequest(f"content block {_tag(block)!r} is not supported by OpenAI-compatible models")


def _tool_result(block: ToolResultBlock) -> str:
    # OpenAI's tool messages hold text only: images in a result are left out.
    text = (
        block.content
        if isinstance(block.content, str)
        else "\n".join(part.text for part in block.content if isinstance(part, TextBlock))
    )
    return f"Error: {text}" if block.is_error else text


def _assistant_message(message: Message) -> dict[str, Any]:
    if isinstance(message.content, str):
        return {"role": "assistant", "content": message.content}
    calls = []
    for block in message.content:
        if isinstance(block, ToolUseBlock):
            function = {"name": block.name, "arguments": _encode(block.input).decode()}
            calls.append({"id": block.id, "type": "function", "function": function})
        elif not isinstance(block, TextBlock | ThinkingBlock | RedactedThinkingBlock):
            # Thinking is the model's own: not sent back to another vendor.
            raise InvalidRequest(
                f"assistant content block {_tag(block)!r} is not supported by OpenAI-compatible models"
            )
    text = text_of(message.content)
    reply: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else "")}
    if calls:
        reply["tool_calls"] = calls
    return reply


def _tag(block: Block) -> str:
    return str(block.__struct_config__.tag)
