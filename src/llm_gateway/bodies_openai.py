"""OpenAI chat-completions request bodies (wire-formats §2) -> a GenerationRequest in the Anthropic format; pure.

- ``system`` and ``developer`` messages, wherever they stand, become the system prompt (joined by blank lines).
- An assistant's ``tool_calls`` become ``tool_use`` blocks (arguments: a JSON object); ``tool`` messages become
  ``tool_result`` blocks of a user turn. Consecutive turns of one role are merged, as the Messages API wants
  them to alternate; tool results stay first in their turn, as they come first after the assistant's calls.
- Content parts: ``text`` and ``image_url`` (a ``data:`` URL becomes a base64 image); any other part is a 400.
- Options with no counterpart here (``logprobs``, ``seed``, penalties, ``response_format``, ``user`` …) are
  accepted and ignored, as most OpenAI-compatible servers do; ``n`` above 1 is refused (one choice only).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from .bodies import MaxTokens, Model
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
)
from .errors import InvalidRequest
from .providers import GenerationRequest
from .providers.registry import VENDOR_KEYS

DEFAULT_MAX_TOKENS = 4096  # OpenAI's max_tokens is optional, Anthropic's required: the gateway's usual default


class TextPart(msgspec.Struct, tag="text", tag_field="type"):
    text: str


class ImageUrl(msgspec.Struct):
    url: str
    detail: str | None = None


class ImagePart(msgspec.Struct, tag="image_url", tag_field="type"):
    image_url: ImageUrl


class RefusalPart(msgspec.Struct, tag="refusal", tag_field="type"):
    refusal: str


class SystemMessage(msgspec.Struct, tag="system", tag_field="role"):
    content: str | list[TextPart]
    name: str | None = None


class DeveloperMessage(msgspec.Struct, tag="developer", tag_field="role"):
    content: str | list[TextPart]
    name: str | None = None


class UserMessage(msgspec.Struct, tag="user", tag_field="role"):
    content: str | list[TextPart | ImagePart]
    name: str | None = None


class FunctionCall(msgspec.Struct):
    name: str
    arguments: str = ""


class ToolCallParam(msgspec.Struct):
    id: str
    function: FunctionCall
    type: Literal["function"] = "function"


class AssistantMessage(msgspec.Struct, tag="assistant", tag_field="role"):
    content: str | list[TextPart | RefusalPart] | None = None
    tool_calls: list[ToolCallParam] | None = None
    refusal: str | None = None
    name: str | None = None


class ToolMessage(msgspec.Struct, tag="tool", tag_field="role"):
    tool_call_id: str
    content: str | list[TextPart]


ChatMessage = SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage


class FunctionDef(msgspec.Struct):
    name: Annotated[str, Meta(min_length=1, max_length=128)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChatTool(msgspec.Struct):
    function: FunctionDef
    type: Literal["function"] = "function"


class NamedFunction(msgspec.Struct):
    name: str


class NamedToolChoice(msgspec.Struct):
    function: NamedFunction
    type: Literal["function"] = "function"


class StreamOptions(msgspec.Struct):
    include_usage: bool = False


class ChatCompletionRequest(msgspec.Struct, kw_only=True):
    """The body of ``POST /v1/chat/completions``; fields the gateway has no use for are ignored."""

    model: Model | None = None  # OpenAI requires one; here CLAUDE_MODEL stands in
    messages: Annotated[list[ChatMessage], Meta(min_length=1)]
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    stop: str | list[str] | None = None
    tools: list[ChatTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Meta(ge=1)] | None = None

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


def _bad(message: str, *loc: str | int) -> InvalidRequest:
    return InvalidRequest(message, detail=[{"loc": ["body", *loc], "msg": message, "type": "invalid"}])


def from_chat_completion(body: ChatCompletionRequest, default_model: str) -> GenerationRequest:
    model = body.model or default_model
    if body.n is not None and body.n > 1:
        raise _bad("n above 1 is not supported: the gateway answers with one choice", "n")
    vendor = model.partition("/")[0] if "/" in model else ""
    if body.temperature is not None and body.temperature > 1 and vendor not in VENDOR_KEYS:
        raise _bad("temperature above 1 is not supported by Claude models", "temperature")
    messages, system = to_anthropic(body.messages)
    tools = [_tool(tool.function) for tool in body.tools or ()]
    return GenerationRequest(
        model=model,
        messages=messages,
        max_tokens=body.max_completion_tokens or body.max_tokens or DEFAULT_MAX_TOKENS,
        system=system,
        temperature=body.temperature,
        top_p=body.top_p,
        stop_sequences=[body.stop] if isinstance(body.stop, str) else body.stop or None,
        tools=tools or None,
        tool_choice=_tool_choice(body) if tools else None,
    )


def to_anthropic(messages: list[ChatMessage]) -> tuple[list[Message], str | None]:
    """(messages, system) for the Messages API."""
    turns = Turns()

    for i, message in enumerate(messages):
        match message:
            case SystemMessage(content=content) | DeveloperMessage(content=content):
                turns.system.append(_text(content))
            case UserMessage(content=content):
                turns.add("user", _user_blocks(content, i))
            case AssistantMessage():
                turns.add("assistant", _assistant_blocks(message, i))
            case ToolMessage(tool_call_id=call_id, content=content):
                turns.add("user", [ToolResultBlock(call_id, _text(content))])
    if turns.last_role is None:
        raise _bad("messages must hold a user message", "messages")
    return turns.messages(), turns.system_prompt()


def _text(content: str | list[TextPart]) -> str:
    return content if isinstance(content, str) else "".join(part.text for part in content)


def _user_blocks(content: str | list[TextPart | ImagePart], i: int) -> list[Block]:
    if isinstance(content, str):
        return [TextBlock(content)] if content else []
    blocks: list[Block] = []
    for j, part in enumerate(content):
        if isinstance(part, ImagePart):
            blocks.append(ImageBlock(_image_source(part.image_url.url, i, j)))
        elif part.text:
            blocks.append(TextBlock(part.text))
    return blocks


def _image_source(url: str, i: int, j: int) -> Base64Source | UrlSource:
    if url.startswith(("https://", "http://")):
        return UrlSource(url)
    head, comma, data = url.partition(",")
    if url.startswith("data:") and comma and head.endswith(";base64"):
        return Base64Source(head.removeprefix("data:").removesuffix(";base64"), data)
    raise _bad("image_url must be an http(s) URL or a base64 data: URL", "messages", i, "content", j, "image_url")


def _assistant_blocks(message: AssistantMessage, i: int) -> list[Block]:
    content = message.content
    texts = [content or ""] if not isinstance(content, list) else [p.text for p in content if isinstance(p, TextPart)]
    blocks: list[Block] = [TextBlock(text) for text in texts if text]
    for j, call in enumerate(message.tool_calls or ()):
        arguments = _arguments(call.function.arguments, ("messages", i, "tool_calls", j, "function", "arguments"))
        blocks.append(ToolUseBlock(call.id, call.function.name, arguments))
    return blocks


def _arguments(raw: str, loc: tuple[str | int, ...]) -> dict[str, Any]:
    try:
        value = msgspec.json.decode(raw or "{}")
    except msgspec.DecodeError:
        raise _bad("tool call arguments are not JSON", *loc) from None
    if not isinstance(value, dict):
        raise _bad("tool call arguments must be a JSON object", *loc)
    return value


def _tool(function: FunctionDef) -> dict[str, Any]:
    tool: dict[str, Any] = {"name": function.name}
    if function.description:
        tool["description"] = function.description
    tool["input_schema"] = function.parameters or {"type": "object", "properties": {}}
    return tool


def _tool_choice(body: ChatCompletionRequest) -> dict[str, Any] | None:
    match body.tool_choice:
        case NamedToolChoice(function=NamedFunction(name=name)):
            choice: dict[str, Any] = {"type": "tool", "name": name}
        case "required":
            choice = {"type": "any"}
        case "none":
            return {"type": "none"}  # Anthropic's "none" takes no other field
        case _:
            choice = {"type": "auto"}
    if body.parallel_tool_calls is False:
        choice["disable_parallel_tool_use"] = True
    elif body.tool_choice is None:
        return None  # the upstream's default, auto
    return choice
