"""The answer to a prompt, as both LLM APIs give it before their wire formats: text deltas, then a tool call."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Literal

import msgspec

from .words import emulated_tool_input

Ending = Literal["truncated", "tool", "done"]


class Answer(msgspec.Struct, frozen=True):
    prompt: str
    deltas: list[str]
    tool: str | None
    ending: Ending  # each API names it: max_tokens / tool_use / end_turn, length / tool_calls / stop

    @property
    def output_tokens(self) -> int:
        return len(self.deltas) + (3 if self.tool else 0)

    def arguments(self) -> str:
        """The tool input as a JSON string (`emulated_tool_input`)."""
        return msgspec.json.encode(emulated_tool_input(self.prompt)).decode()

    def argument_halves(self) -> tuple[str, str]:
        """The two fragments a stream sends the tool input in."""
        arguments = self.arguments()
        half = len(arguments) // 2
        return arguments[:half], arguments[half:]


def texts(content: object) -> Iterator[str]:
    """Every text in a system prompt or message content, tool results' contents included."""
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for block in content:
            if isinstance(block, dict):
                if isinstance(text := block.get("text"), str):
                    yield text
                yield from texts(block.get("content"))


def input_tokens(contents: Iterable[object]) -> int:
    """A token estimate of a request: four characters a token, of all the texts in ``contents``."""
    return max(1, sum(len(text) for content in contents for text in texts(content)) // 4)
