"""The request bodies the routes accept, their limits named once, and one builder from each to a GenerationRequest.

Limits: ``MaxTokens`` (1–128,000) is what the largest served model can write; ``SeedMaxTokens`` (1–8,000) and
``SeedPrompt`` (1–10,000 chars) are seed 001's documented limits, kept on its routes so its clients see the
same 422s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from .content import Message, user
from .errors import InvalidRequest
from .http import require_text, validate
from .providers import GenerationRequest
from .tanstack import ClientMessage, to_anthropic, to_anthropic_tools
from .tenants import TASK_ID_PATTERN

TaskId = Annotated[str, Meta(pattern=TASK_ID_PATTERN)]
NonEmpty = Annotated[str, Meta(min_length=1)]
SeedPrompt = Annotated[str, Meta(min_length=1, max_length=10_000)]
Question = Annotated[str, Meta(min_length=1, max_length=100_000)]
MaxTokens = Annotated[int, Meta(ge=1, le=128_000)]
SeedMaxTokens = Annotated[int, Meta(ge=1, le=8000)]
Temperature = Annotated[float, Meta(ge=0, le=1)]
Model = Annotated[str, Meta(min_length=1, max_length=200)]


class PromptRequest(msgspec.Struct, kw_only=True):
    """Seed 000's body: a prompt, or a whole conversation in ``messages`` (the prompt then adds a last turn)."""

    prompt: NonEmpty | None = None
    system_prompt: str | None = None
    max_tokens: MaxTokens = 4096
    temperature: Temperature | None = None
    model: Model | None = None
    messages: Annotated[list[Message], Meta(min_length=1)] | None = None
    tools: list[dict[str, Any]] | None = None
    task_id: TaskId | None = None


class SeedOptions(msgspec.Struct, kw_only=True):
    """What seed 001's bodies share beside their text."""

    max_tokens: SeedMaxTokens = 1024
    temperature: Temperature | None = None
    system: str | None = None
    model: Model | None = None


class GenerateRequest(SeedOptions, kw_only=True):
    prompt: SeedPrompt


class WsGenerateRequest(GenerateRequest, kw_only=True):
    stream: bool = False


class ChatRequest(SeedOptions, kw_only=True):
    message: SeedPrompt
    conversation_id: TaskId | None = None


class QueryRequest(msgspec.Struct, kw_only=True):
    prompt: NonEmpty
    max_tokens: MaxTokens = 1024
    temperature: Temperature | None = None
    system: str | None = None
    model: Model | None = None


class QuestionRequest(msgspec.Struct, kw_only=True):
    question: Question
    use_cache: bool = True
    model: Model | None = None
    max_tokens: MaxTokens = 1024
    temperature: Temperature | None = None
    system: str | None = None


class MessagesRequest(msgspec.Struct, kw_only=True):
    messages: Annotated[list[ClientMessage], Meta(min_length=1)]
    tools: list[dict[str, Any]] | None = None
    model: Model | None = None
    data: dict[str, Any] | None = None


class RunAgentInput(msgspec.Struct, kw_only=True):
    threadId: str = ""
    runId: TaskId | None = None
    messages: Annotated[list[ClientMessage], Meta(min_length=1)]
    tools: list[dict[str, Any]] | None = None
    forwardedProps: dict[str, Any] | None = None
    data: dict[str, Any] | None = None


class _ClientOptions(msgspec.Struct):
    model: Model
    max_tokens: MaxTokens
    temperature: Temperature | None = None


def from_prompt(body: PromptRequest, default_model: str) -> GenerationRequest:
    if body.prompt is None and body.messages is None:
        raise InvalidRequest(
            "prompt is required (or messages)",
            detail=[{"loc": ["body", "prompt"], "msg": "field required", "type": "missing"}],
            status=422,
        )
    messages = list(body.messages or ())
    if body.prompt is not None:
        messages.append(user(require_text(body.prompt, "prompt")))
    return GenerationRequest(
        model=body.model or default_model,
        messages=messages,
        max_tokens=body.max_tokens,
        system=body.system_prompt or None,
        temperature=body.temperature,
        tools=body.tools or None,
    )


def from_text(
    body: GenerateRequest | ChatRequest | QueryRequest | QuestionRequest,
    default_model: str,
    history: Sequence[Message] = (),
) -> GenerationRequest:
    """One user turn (the body's prompt, message or question) after ``history``."""
    match body:
        case ChatRequest():
            text, field = body.message, "message"
        case QuestionRequest():
            text, field = body.question, "question"
        case _:
            text, field = body.prompt, "prompt"
    return GenerationRequest(
        model=body.model or default_model,
        messages=[*history, user(require_text(text, field))],
        max_tokens=body.max_tokens,
        system=body.system or None,
        temperature=body.temperature,
    )


def from_client_messages(body: MessagesRequest | RunAgentInput, default_model: str) -> GenerationRequest:
    """TanStack AI's messages (legacy body or AG-UI run); options from forwardedProps over the ``data`` mirror."""
    if isinstance(body, RunAgentInput):
        options = {**(body.data or {}), **(body.forwardedProps or {})}
    else:
        options = {"model": body.model, **(body.data or {})}
    messages, system = to_anthropic(body.messages)
    checked = validate(
        {
            "model": options.get("model") or default_model,
            "max_tokens": options.get("max_tokens") or options.get("maxTokens") or 4096,
            "temperature": options.get("temperature"),
        },
        _ClientOptions,
    )
    return GenerationRequest(
        model=checked.model,
        messages=messages,
        max_tokens=checked.max_tokens,
        system=system,
        temperature=checked.temperature,
        tools=to_anthropic_tools(body.tools),
    )
