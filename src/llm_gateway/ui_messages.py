"""The Vercel AI SDK's chat request (``useChat`` through ``DefaultChatTransport``) and its UIMessages -> the
Anthropic message format (wire-formats §8). Pure functions.

A UIMessage is kept as the client sent it (its parts as plain JSON), so the chat reads back exactly. Converting:
system messages become the system prompt; a user message's text and files (images, PDFs, plain text) become
blocks; an assistant message is cut into its steps (``step-start``), each one an assistant turn of text and tool
calls followed by a user turn of the results the client added. A call without a result (the client never ran
it) is left out, since the Messages API wants every ``tool_use`` answered; so are reasoning (it has no
signature to send back) and data parts. Consecutive turns of one role are merged.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from .bodies import MaxTokens, Model, TaskId, Temperature
from .content import (
    Base64Source,
    Block,
    DocumentBlock,
    ImageBlock,
    Message,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
    Turns,
    UrlSource,
)
from .errors import InvalidRequest
from .http import validate
from .providers import GenerationRequest
from .tanstack import to_anthropic_tools

Part = dict[str, Any]
ANSWERED = {"output-available", "output-error", "output-denied"}


class UIMessage(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    role: Literal["system", "user", "assistant"]
    parts: list[Part]
    metadata: Any = None


class AiChatRequest(msgspec.Struct, kw_only=True):
    """``DefaultChatTransport``'s body (the whole chat in ``messages``), or an app's ``{id, message}`` (only the
    newest message, the rest kept here). Options an app may add through the transport's ``body``: model,
    system, max_tokens, temperature, tools."""

    id: TaskId
    messages: Annotated[list[UIMessage], Meta(min_length=1)] | None = None
    message: UIMessage | None = None
    trigger: Literal["submit-message", "regenerate-message"] = "submit-message"
    messageId: str | None = None
    model: Model | None = None
    system: str | None = None
    max_tokens: MaxTokens = 4096
    temperature: Temperature | None = None
    tools: list[dict[str, Any]] | None = None


def is_ai_sdk_chat(data: Any) -> bool:
    """An AI SDK body shares ``POST /api/chat`` with seed 001's ``{message: "text"}``: told apart by its shape."""
    return (
        isinstance(data, dict)
        and "id" in data
        and (isinstance(data.get("messages"), list) or isinstance(data.get("message"), dict))
    )


def parse_chat_request(data: Any) -> AiChatRequest:
    body = validate(data, AiChatRequest)
    if body.messages is None and body.message is None:
        detail = [{"loc": ["body", "messages"], "msg": "send messages, or the newest message", "type": "missing"}]
        raise InvalidRequest("messages or message is required", detail=detail, status=422)
    return body


def merged(kept: Sequence[UIMessage], body: AiChatRequest) -> list[UIMessage]:
    """The chat after ``body``: a whole ``messages`` list replaces it; one ``message`` replaces the kept message of
    its id and drops the ones after it (a regenerate, an edit, tool results added to an answer), else is appended."""
    if body.messages is not None:
        return list(body.messages)
    assert body.message is not None
    for i, message in enumerate(kept):
        if message.id == body.message.id:
            return [*kept[:i], body.message]
    return [*kept, body.message]


def to_generation(body: AiChatRequest, messages: Sequence[UIMessage], default_model: str) -> GenerationRequest:
    converted, system = to_anthropic(messages)
    prompt = "\n\n".join(s for s in (body.system, system) if s) or None
    return GenerationRequest(
        model=body.model or default_model,
        messages=converted,
        max_tokens=body.max_tokens,
        system=prompt,
        temperature=body.temperature,
        tools=to_anthropic_tools(body.tools),
    )


def to_anthropic(messages: Sequence[UIMessage]) -> tuple[list[Message], str | None]:
    """(messages, system) for the Messages API; 422 unless the chat ends with a user turn or tool results."""
    turns = Turns()

    for message in messages:
        if message.role == "system":
            turns.system.append("".join(str(p.get("text", "")) for p in message.parts if p.get("type") == "text"))
        elif message.role == "user":
            turns.add("user", [block for part in message.parts for block in _user_block(part)])
        else:
            for calls, results in _steps(message.parts):
                turns.add("assistant", calls)
                turns.add("user", results)
    if turns.last_role != "user":
        raise InvalidRequest(
            "the chat must end with a user message or tool results",
            detail=[{"loc": ["body", "messages"], "msg": "no user turn to answer"}],
            status=422,
        )
    return turns.messages(), turns.system_prompt()


def _user_block(part: Part) -> list[Block]:
    kind = part.get("type")
    if kind == "text" and isinstance(part.get("text"), str) and part["text"]:
        return [TextBlock(part["text"])]
    if kind == "file" and isinstance(part.get("url"), str) and isinstance(part.get("mediaType"), str):
        return _file_block(part["mediaType"], part["url"])
    return []


def _file_block(media_type: str, url: str) -> list[Block]:
    data: str | None = None
    if url.startswith("data:"):
        header, _, data = url[5:].partition(",")
        if not header.endswith(";base64"):
            return []
    elif not url.startswith(("https://", "http://")):
        return []
    if media_type.startswith("image/"):
        return [ImageBlock(UrlSource(url) if data is None else Base64Source(media_type, data))]
    if media_type == "application/pdf":
        if data is None:
            return [DocumentBlock({"type": "url", "url": url})]
        return [DocumentBlock({"type": "base64", "media_type": media_type, "data": data})]
    if media_type == "text/plain" and data is not None:
        try:
            text = base64.b64decode(data, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return []
        return [DocumentBlock({"type": "text", "media_type": media_type, "data": text})]
    return []


def _steps(parts: list[Part]) -> list[tuple[list[Block], list[Block]]]:
    """Per step of an assistant message: its text and answered tool calls, and their results."""
    steps: list[tuple[list[Block], list[Block]]] = [([], [])]
    for part in parts:
        kind = part.get("type")
        calls, results = steps[-1]
        if kind == "step-start":
            if calls or results:
                steps.append(([], []))
        elif kind == "text" and isinstance(part.get("text"), str) and part["text"]:
            calls.append(TextBlock(part["text"]))
        elif isinstance(kind, str) and (kind.startswith("tool-") or kind == "dynamic-tool"):
            if part.get("state") in ANSWERED and isinstance(part.get("toolCallId"), str):
                name = part.get("toolName") if kind == "dynamic-tool" else kind[5:]
                calls.append(ToolUseBlock(part["toolCallId"], str(name), _input(part.get("input"))))
                results.append(_result(part))
    return steps


def _input(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {"input": value}


def _result(part: Part) -> ToolResultBlock:
    call_id = part["toolCallId"]
    match part.get("state"):
        case "output-available":
            output = part.get("output")
            text = output if isinstance(output, str) else msgspec.json.encode(output).decode()
            return ToolResultBlock(call_id, text)
        case "output-error":
            return ToolResultBlock(call_id, str(part.get("errorText") or "the tool failed"), is_error=True)
    return ToolResultBlock(call_id, "the user denied this tool call", is_error=True)
