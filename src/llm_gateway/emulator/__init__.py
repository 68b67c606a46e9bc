"""A deterministic emulator of the Anthropic Messages API, of OpenAI's chat completions and of PiAPI's task API
(Trellis, image -> 3D), for tests, ``llm-gateway --demo`` and benchmarks.

The answer to a request is derived from the text of its last user message (the *prompt*): the same prompt
always yields the same words (`emulated_deltas`), through either LLM API. Directives in the prompt, such as
``[emu:deltas=10] [emu:fault=529]``, steer it: `plan`. Then each API's module gives that answer its wire format
(`anthropic`, `openai`), through the same steps (`stream`). PiAPI tasks are steered by their create body
(`piapi_task`, `piapi`). The ``/_emulator/*`` routes (`app`) need no API key.
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
