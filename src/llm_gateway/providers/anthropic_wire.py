"""The Anthropic Messages stream on the wire (wire-formats §1.2), decoded with msgspec.

Decoding the stream's bytes here, rather than through the SDK's pydantic models, is about ten times
cheaper per event (measured: 50 deltas in ~90 µs against ~840 µs). Unknown event types and fields are
ignored, as the API asks.
"""

from __future__ import annotations

import msgspec


class WireUsage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class WireDelta(msgspec.Struct):
    type: str = ""
    text: str = ""
    partial_json: str = ""
    stop_reason: str | None = None
    stop_sequence: str | None = None


class WireBlock(msgspec.Struct):
    type: str = ""
    text: str = ""
    id: str = ""
    name: str = ""


class WireMessage(msgspec.Struct):
    model: str = ""
    usage: WireUsage = msgspec.field(default_factory=WireUsage)


class WireError(msgspec.Struct):
    type: str = ""
    message: str = ""


class WireEvent(msgspec.Struct):
    type: str
    index: int = 0
    delta: WireDelta | None = None
    content_block: WireBlock | None = None
    message: WireMessage | None = None
    usage: WireUsage | None = None
    error: WireError | None = None


decode_wire_event = msgspec.json.Decoder(WireEvent).decode


class SSEDecoder:
    """Bytes in, the ``data`` payloads of complete events out (WHATWG §9.2 framing, any line ending)."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        buffer = self._buffer + chunk if self._buffer else chunk
        if b"\r" in buffer:
            # A trailing \r may be the first half of a \r\n split across chunks: keep it for the next one.
            held = buffer.endswith(b"\r")
            buffer = (buffer[:-1] if held else buffer).replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if held:
                buffer += b"\r"
        payloads = []
        start = 0
        while (end := buffer.find(b"\n\n", start)) >= 0:
            data: bytes | None = None
            for line in buffer[start:end].split(b"\n"):
                if line.startswith(b"data:"):
                    value = line[6:] if line[5:6] == b" " else line[5:]
                    data = value if data is None else data + b"\n" + value
            if data:
                payloads.append(data)
            start = end + 2
        self._buffer = buffer[start:]
        return payloads

    def finish(self) -> list[bytes]:
        """At the end of the body: a \r held back as a possible half of \r\n was a line end after all."""
        return self.feed(b"\n") if self._buffer.endswith(b"\r") else []
