"""What every upstream's handlers share: the app's settings and its request counters."""

from __future__ import annotations

import collections
import dataclasses


@dataclasses.dataclass
class EmulatorStats:
    """Requests received per upstream API, faulted ones included; and the last bodies, for tests to inspect.

    ``piapi_gets_by_task`` counts the GETs of each task id (unknown ones included); ``as_dict`` leaves it out.
    """

    messages: int = 0
    chat_completions: int = 0
    piapi_creates: int = 0
    piapi_gets: int = 0
    piapi_gets_by_task: dict[str, int] = dataclasses.field(default_factory=dict)
    bodies: collections.deque[bytes] = dataclasses.field(default_factory=lambda: collections.deque(maxlen=50))

    def reset(self) -> None:
        self.messages = 0
        self.chat_completions = 0
        self.piapi_creates = 0
        self.piapi_gets = 0
        self.piapi_gets_by_task.clear()
        self.bodies.clear()

    def as_dict(self) -> dict[str, int]:
        return {
            "messages": self.messages,
            "chat_completions": self.chat_completions,
            "piapi_creates": self.piapi_creates,
            "piapi_gets": self.piapi_gets,
        }


@dataclasses.dataclass
class Emulator:
    """One app's settings: ``deltas`` and ``delay`` are the defaults the ``[emu:…]`` directives override."""

    deltas: int
    delay: float
    api_key: str | None
    stats: EmulatorStats = dataclasses.field(default_factory=EmulatorStats)
    requests_by_prompt: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)

    def count_request(self, prompt: str) -> int:
        """How many requests asked for ``prompt`` so far, this one included (for ``[emu:faults=N]``)."""
        if len(self.requests_by_prompt) > 10_000:
            self.requests_by_prompt.clear()  # a bound: only tests rely on it, and they use few prompts
        self.requests_by_prompt[prompt] += 1
        return self.requests_by_prompt[prompt]
