"""A deterministic emulator of the Anthropic Messages API, of OpenAI's chat completions and of PiAPI's task API
(Trellis, image -> 3D), for tests, ``llm-gateway --demo`` and benchmarks.

The answer to a request is derived from the text of its last user message (the *prompt*): the same prompt
always yields the same words (`emulated_deltas`), through either API. A test steers the emulator with
directives anywhere in that text, e.g. ``hello [emu:deltas=10] [emu:fault=529]``:

    deltas=N        number of text deltas (default: the app's ``deltas``)
    delay_ms=N      pause between deltas (default: the app's ``delay``); a non-streaming
                    request sleeps, once per delta, only when this directive is given
    fault=F         401 | 429 | 500 | 529 -> that HTTP error, streaming or not;
                    error_midstream | drop | stall -> after ``after`` deltas (default 3) send an
                    ``event: error``, cut the connection, or go silent until the client leaves
    after=N         see ``fault``
    retry_after=N   ``retry-after`` header of fault=429 (default 1)
    tool=NAME       answer with a tool_use block after the text (`emulated_tool_input`); on
                    chat completions, a tool call `emulated_call_id` whose arguments come in two fragments

Choices a reader may not expect:

- Directives are part of the prompt: they are hashed with it and never stripped from it.
- When ``max_tokens`` cuts the text short, no tool_use block follows (stop_reason ``max_tokens``).
- Without ``stream``, ``error_midstream`` is a 529 (what the real API answers then); ``drop`` and
  ``stall`` send the headers, then cut the connection or go silent.
- The ``/_emulator/*`` routes need no API key.
- ``POST /v1/chat/completions`` answers in OpenAI's shapes: errors ``{"error": {message, type, param, code}}``,
  fault 529 as a 503, ``error_midstream`` as a ``data: {"error": …}`` frame, the key as ``Authorization:
  Bearer`` only. A conversation ending in ``tool`` messages has their contents as its prompt, which is what
  the Messages side makes of the same turn (tool results only). ``max_completion_tokens`` or ``max_tokens``
  cut the text (``finish_reason: "length"``).

PiAPI (Trellis, image -> 3D): `llm_gateway.emulator.piapi`.
"""

from __future__ import annotations

from .app import create_emulator_app
from .piapi_task import piapi_model_url
from .state import EmulatorStats
from .words import emulated_call_id, emulated_deltas, emulated_text, emulated_tool_id, emulated_tool_input

__all__ = [
    "EmulatorStats",
    "create_emulator_app",
    "emulated_call_id",
    "emulated_deltas",
    "emulated_text",
    "emulated_tool_id",
    "emulated_tool_input",
    "piapi_model_url",
]
