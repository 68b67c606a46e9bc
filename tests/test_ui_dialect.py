"""The ``ui`` dialect (the AI SDK's UI message stream) and the UIMessage converter: pure functions."""

from __future__ import annotations

from typing import Any

import pytest

from llm_gateway.content import (
    Base64Source,
    DocumentBlock,
    ImageBlock,
    Message,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
    UrlSource,
)
from llm_gateway.dialects import DIALECTS
from llm_gateway.dialects_ui import UiDialect, assistant_message
from llm_gateway.errors import InvalidRequest
from llm_gateway.events import Error, Event, Start, Text, ToolCall
from llm_gateway.ui_messages import AiChatRequest, UIMessage, is_ai_sdk_chat, merged, to_anthropic
from tests.test_dialects import FAILED, LOG, data_lines, render

CANCELLED: list[tuple[str, Event]] = [*LOG[:2], ("1-3", Error("cancelled", "cancelled by request"))]


def test_a_message_with_text_and_a_tool_call() -> None:
    assert data_lines(render(DIALECTS["ui"]("t1", ""), LOG)) == [
        {"type": "start", "messageId": "msg_t1"},
        {"type": "start-step"},
        {"type": "text-start", "id": "text-1"},
        {"type": "text-delta", "id": "text-1", "delta": "Hello"},
        {"type": "text-delta", "id": "text-1", "delta": " two\nlines\n"},
        {"type": "text-end", "id": "text-1"},
        {"type": "tool-input-start", "toolCallId": "toolu_1", "toolName": "get_weather"},
        {"type": "tool-input-delta", "toolCallId": "toolu_1", "inputTextDelta": '{"city":'},
        {"type": "tool-input-delta", "toolCallId": "toolu_1", "inputTextDelta": '"Paris"}'},
        {
            "type": "tool-input-available",
            "toolCallId": "toolu_1",
            "toolName": "get_weather",
            "input": {"city": "Paris"},
        },
        {"type": "finish-step"},
        {"type": "finish", "finishReason": "tool-calls"},
        "[DONE]",
    ]


def test_only_the_last_frame_of_an_event_carries_its_id() -> None:
    raw = UiDialect("t1").render("9-9", Start("t1", "claude-x", message_id="m1"))
    assert raw == b'data: {"type":"start","messageId":"m1"}\n\nid: 9-9\ndata: {"type":"start-step"}\n\n'


def test_a_failure_says_its_type_in_a_transient_data_chunk_then_errors() -> None:
    chunks = data_lines(
        render(UiDialect("t1"), [*FAILED[:2], ("1-3", Error("upstream_rate_limited", "Slow", True, 3))])
    )
    assert chunks[-4:] == [
        {"type": "text-end", "id": "text-1"},
        {
            "type": "data-error",
            "data": {"type": "upstream_rate_limited", "retryable": True, "retry_after": 3},
            "transient": True,
        },
        {"type": "error", "errorText": "Slow"},
        "[DONE]",
    ]


def test_a_stop_ends_with_abort() -> None:
    chunks = data_lines(render(UiDialect("t1"), CANCELLED))
    assert chunks[-3:] == [
        {"type": "text-end", "id": "text-1"},
        {"type": "abort", "reason": "cancelled by request"},
        "[DONE]",
    ]


def test_a_tool_input_that_is_not_an_object_is_an_input_error() -> None:
    log: list[tuple[str, Event]] = [
        ("1-0", Start("t1", "m")),
        ("1-1", ToolCall(0, "c1", "f", "[1, 2")),
        ("1-2", Text(1, "after")),
    ]
    error = data_lines(render(UiDialect("t1"), log))[4]
    assert error == {
        "type": "tool-input-error",
        "toolCallId": "c1",
        "toolName": "f",
        "input": "[1, 2",
        "errorText": "the tool input is not a JSON object",
    }


def test_the_kept_answer_is_what_the_client_built() -> None:
    message = assistant_message("t1", [event for _, event in LOG])
    assert message == UIMessage(
        id="msg_t1",
        role="assistant",
        parts=[
            {"type": "step-start"},
            {"type": "text", "text": "Hello two\nlines\n", "state": "done"},
            {
                "type": "tool-get_weather",
                "toolCallId": "toolu_1",
                "state": "input-available",
                "input": {"city": "Paris"},
            },
        ],
    )
    stopped = assistant_message("t1", [event for _, event in CANCELLED])
    assert stopped is not None and stopped.parts[1] == {"type": "text", "text": "Hello", "state": "done"}
    assert assistant_message("t1", [Start("t1", "m"), Error("upstream_auth", "no")]) is None


def user(id_: str, *parts: dict[str, Any]) -> UIMessage:
    return UIMessage(id=id_, role="user", parts=list(parts))


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def test_ui_messages_to_the_messages_api() -> None:
    png = "iVBORw0KGgo="
    messages = [
        UIMessage(id="s", role="system", parts=[text("Be brief.")]),
        user(
            "u1",
            text("Look at this"),
            {"type": "file", "mediaType": "image/png", "url": f"data:image/png;base64,{png}"},
        ),
        UIMessage(
            id="a1",
            role="assistant",
            parts=[
                {"type": "step-start"},
                {"type": "reasoning", "text": "hmm"},
                text("Let me search."),
                {
                    "type": "tool-search",
                    "toolCallId": "c1",
                    "state": "output-available",
                    "input": {"q": "x"},
                    "output": {"n": 1},
                },
                {"type": "tool-other", "toolCallId": "c2", "state": "input-available", "input": {}},
                {"type": "step-start"},
                text("Found it."),
                {
                    "type": "dynamic-tool",
                    "toolName": "calc",
                    "toolCallId": "c3",
                    "state": "output-error",
                    "input": {},
                    "errorText": "boom",
                },
            ],
        ),
        user(
            "u2", text("Thanks"), {"type": "file", "mediaType": "application/pdf", "url": "https://example.com/a.pdf"}
        ),
    ]
    converted, system = to_anthropic(messages)
    assert system == "Be brief."
    assert converted == [
        Message("user", [TextBlock("Look at this"), ImageBlock(Base64Source("image/png", png))]),
        Message("assistant", [TextBlock("Let me search."), ToolUseBlock("c1", "search", {"q": "x"})]),
        Message("user", [ToolResultBlock("c1", '{"n":1}')]),
        Message("assistant", [TextBlock("Found it."), ToolUseBlock("c3", "calc", {})]),
        Message(
            "user",
            [
                ToolResultBlock("c3", "boom", is_error=True),
                TextBlock("Thanks"),
                DocumentBlock({"type": "url", "url": "https://example.com/a.pdf"}),
            ],
        ),
    ]
    url_image = user("u", {"type": "file", "mediaType": "image/jpeg", "url": "https://example.com/a.jpg"})
    assert to_anthropic([url_image])[0] == [Message("user", [ImageBlock(UrlSource("https://example.com/a.jpg"))])]


def test_a_chat_must_end_with_something_to_answer() -> None:
    with pytest.raises(InvalidRequest, match="must end with a user message"):
        to_anthropic([user("u1", text("hi")), UIMessage(id="a1", role="assistant", parts=[text("hello")])])


def test_the_newest_message_replaces_its_namesake_or_is_appended() -> None:
    kept = [user("u1", text("a")), UIMessage(id="a1", role="assistant", parts=[text("b")]), user("u2", text("c"))]
    again = AiChatRequest(id="c", message=user("u1", text("a!")))
    assert merged(kept, again) == [user("u1", text("a!"))]  # a regenerate or an edit: what followed goes
    new = AiChatRequest(id="c", message=user("u3", text("d")))
    assert merged(kept, new) == [*kept, user("u3", text("d"))]
    whole = AiChatRequest(id="c", messages=[user("x", text("y"))])
    assert merged(kept, whole) == [user("x", text("y"))]


def test_the_ai_sdk_body_is_told_from_seed_001s_by_its_shape() -> None:
    assert is_ai_sdk_chat({"id": "c", "messages": [], "trigger": "submit-message"})
    assert is_ai_sdk_chat({"id": "c", "message": {"id": "u", "role": "user", "parts": []}})
    assert not is_ai_sdk_chat({"message": "hello", "conversation_id": "c"})
    assert not is_ai_sdk_chat({"id": "c", "message": "hello"})
