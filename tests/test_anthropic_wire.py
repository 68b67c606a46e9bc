"""The Messages stream's bytes -> our events, without a network (wire-formats §1.2)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llm_gateway.errors import GatewayError
from llm_gateway.events import Complete, Text, TokenUsage, ToolCall, Usage
from llm_gateway.providers.anthropic import StreamMapper
from llm_gateway.providers.anthropic_wire import SSEDecoder

PAYLOADS: list[dict[str, Any]] = [
    {
        "type": "message_start",
        "message": {
            "id": "msg_01",
            "type": "message",
            "role": "assistant",
            "model": "claude-x",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": 377,
                "output_tokens": 1,
                "cache_read_input_tokens": 3,
                "service_tier": "standard",
            },
        },
    },
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Checking\nthe café"}},
    {"type": "content_block_stop", "index": 0},
    {
        "type": "content_block_start",
        "index": 1,
        "content_block": {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {}},
    },
    {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"locat'}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": 'ion":"Paris"}'}},
    {"type": "content_block_stop", "index": 1},
    {"type": "some_future_event", "surprise": True},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"output_tokens": 20},
    },
    {"type": "message_delta", "delta": {"stop_reason": None}, "usage": {"output_tokens": 42}},
    {"type": "message_stop"},
]


def wire(line_ending: str = "\n") -> bytes:
    frames = [f"event: {p['type']}\ndata: {json.dumps(p)}\n\n" for p in PAYLOADS]
    return "".join(frames).replace("\n", line_ending).encode()


@pytest.mark.parametrize("line_ending", ["\n", "\r\n", "\r"])
@pytest.mark.parametrize("chunk_size", [1, 7, 64, 100_000])
def test_decoder_finds_every_payload_whatever_the_chunking(line_ending: str, chunk_size: int) -> None:
    data = wire(line_ending)
    decoder = SSEDecoder()
    payloads = []
    for start in range(0, len(data), chunk_size):
        payloads.extend(decoder.feed(data[start : start + chunk_size]))
    payloads.extend(decoder.finish())
    assert [json.loads(p) for p in payloads] == PAYLOADS


def test_decoder_joins_multi_line_data_and_skips_comments() -> None:
    assert SSEDecoder().feed(b": ping\n\nevent: x\ndata: a\ndata:b\n\ndata: \n\n") == [b"a\nb"]


def test_mapper_gives_our_events() -> None:
    mapper = StreamMapper("requested-model")
    events = list(mapper.feed_payloads(SSEDecoder().feed(wire())))
    assert events == [
        Text(0, "Checking\nthe café"),
        ToolCall(1, "toolu_01", "get_weather", ""),
        ToolCall(1, "toolu_01", "get_weather", '{"locat'),
        ToolCall(1, "toolu_01", "get_weather", 'ion":"Paris"}'),
        Usage(380, 20),
        Usage(380, 42),  # cumulative: the last value, never a sum
    ]
    assert mapper.complete == Complete("Checking\nthe café", "tool_use", TokenUsage(380, 42), "claude-x")


def test_the_stop_sequence_that_ended_the_message_is_kept() -> None:
    mapper = StreamMapper("m")
    ending = [
        b'{"type":"message_delta","delta":{"stop_reason":"stop_sequence","stop_sequence":"END"},"usage":{"output_tokens":3}}',
        b'{"type":"message_stop"}',
    ]
    list(mapper.feed_payloads(ending))
    assert mapper.complete == Complete("", "stop_sequence", TokenUsage(0, 3), "m", stop_sequence="END")


def test_an_error_event_mid_stream_raises_the_mapped_error_after_the_text_before_it() -> None:
    text = b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"kept"}}'
    error = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    got = []
    with pytest.raises(GatewayError) as raised:
        for event in StreamMapper("m").feed_payloads([text, error]):  # one network chunk
            got.append(event)
    assert got == [Text(0, "kept")]
    assert raised.value.type == "upstream_overloaded" and raised.value.status == 503
