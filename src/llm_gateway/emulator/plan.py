"""The fault plan: what the ``[emu:…]`` directives of a prompt ask of its answer, whichever API it goes out on.

The answer to a request is derived from the text of its last user message (the *prompt*). A test steers the
emulator with directives anywhere in that text, e.g. ``hello [emu:deltas=10] [emu:fault=529]``:

    deltas=N        number of text deltas (default: the app's ``deltas``)
    delay_ms=N      pause between deltas (default: the app's ``delay``); a non-streaming
                    request sleeps, once per delta, only when this directive is given
    fault=F         401 | 429 | 500 | 529 -> that HTTP error, streaming or not;
                    error_midstream | drop | stall -> after ``after`` deltas (default 3) send an
                    ``event: error``, cut the connection, or go silent until the client leaves
    after=N         see ``fault``
    faults=N        the fault hits only the first N requests with this prompt (a retry then succeeds)
    retry_after=N   ``retry-after`` header of fault=429 (default 1)
    tool=NAME       answer with a tool call after the text (`emulated_tool_input`)

- Directives are part of the prompt: they are hashed with it and never stripped from it.
- When the request's token limit cuts the text short, no tool call follows.
- Without ``stream``, ``error_midstream`` is a 529 (what the real API answers then); ``drop`` and
  ``stall`` send the headers, then cut the connection or go silent.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from .answer import Answer
from .state import Emulator
from .words import DIRECTIVE, emulated_deltas

Fault = Literal["401", "429", "500", "529", "error_midstream", "drop", "stall"]
HTTPFault = Literal["401", "429", "500", "529"]


class _Directives(msgspec.Struct, forbid_unknown_fields=True):
    deltas: Annotated[int, msgspec.Meta(ge=0)] | None = None
    delay_ms: Annotated[int, msgspec.Meta(ge=0)] | None = None
    fault: Fault | None = None
    after: Annotated[int, msgspec.Meta(ge=0)] = 3
    retry_after: Annotated[int, msgspec.Meta(ge=0)] = 1
    tool: str | None = None
    faults: Annotated[int, msgspec.Meta(ge=0)] | None = None


class BadDirective(ValueError):
    """A directive that does not parse: each API answers it with its own 400."""


class Plan(msgspec.Struct, frozen=True):
    prompt: str
    stream: bool
    count: int  # of text deltas, before the token limit
    limit: int | None  # the request's token limit
    delay: float  # seconds between deltas
    paced: bool  # whether a non-streaming answer sleeps too: only when ``delay_ms`` is given
    fault: Fault | None
    after: int
    retry_after: int
    tool: str | None

    @property
    def http_fault(self) -> HTTPFault | None:
        return self.fault if self.fault in ("401", "429", "500", "529") else None

    def answer(self) -> Answer:
        deltas = emulated_deltas(self.prompt, self.count)[: self.limit]
        truncated = len(deltas) < self.count
        tool = None if truncated else self.tool
        return Answer(self.prompt, deltas, tool, "truncated" if truncated else "tool" if tool else "done")


def plan(prompt: str, *, stream: bool, limit: int | None, emulator: Emulator) -> Plan:
    """The plan for answering ``prompt``: the app's defaults, overridden by the prompt's directives."""
    try:
        found = msgspec.convert(dict(DIRECTIVE.findall(prompt)), _Directives, strict=False)
    except msgspec.ValidationError as exc:
        raise BadDirective(f"bad emulator directive: {exc}") from None
    fault = found.fault
    if found.faults is not None and emulator.count_request(prompt) > found.faults:
        fault = None
    if fault == "error_midstream" and not stream:
        fault = "529"  # what the real API answers a non-streaming request when overloaded
    return Plan(
        prompt=prompt,
        stream=stream,
        count=emulator.deltas if found.deltas is None else found.deltas,
        limit=limit,
        delay=emulator.delay if found.delay_ms is None else found.delay_ms / 1000,
        paced=found.delay_ms is not None,
        fault=fault,
        after=found.after,
        retry_after=found.retry_after,
        tool=found.tool,
    )
