"""What the emulator answers a prompt with: the same prompt always yields the same words, through any API."""

from __future__ import annotations

import hashlib
import random
import re

_VOCABULARY = (
    "the", "a", "river", "stone", "light", "quiet", "garden", "over", "under", "bright",
    "morning", "evening", "city", "road", "small", "large", "green", "blue", "old", "new",
    "window", "table", "music", "paper", "letter", "story", "cloud", "rain", "sun", "wind",
    "and", "with", "from", "into", "near", "far", "slowly", "quickly", "always", "never",
    "house", "bridge", "forest", "mountain", "ocean", "field", "friend", "teacher", "child", "dog",
    "walks", "reads", "sings", "builds", "finds", "keeps", "opens", "turns", "café", "naïve",
    "日本", "warm", "cold", "simple",
)  # fmt: skip

DIRECTIVE = re.compile(r"\[emu:(\w+)=([^\]]*)\]")


def emulated_deltas(prompt: str, n: int) -> list[str]:
    """The ``n`` text deltas answering ``prompt``: words, a sentence break every 12th, a final full stop."""
    rng = random.Random(int.from_bytes(hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).digest(), "big"))
    words = rng.choices(_VOCABULARY, k=n)
    deltas = [word + (".\n" if i % 12 == 0 else " ") for i, word in enumerate(words, 1)]
    if deltas:
        deltas[-1] = words[-1] + "."
    return deltas


def emulated_text(prompt: str, n: int) -> str:
    return "".join(emulated_deltas(prompt, n))


def emulated_tool_id(prompt: str) -> str:
    return "toolu_emu_" + hashlib.sha256(b"tool:" + prompt.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def emulated_call_id(prompt: str) -> str:
    """The id of the tool call a chat completion answers ``prompt`` with (OpenAI's ids start ``call_``)."""
    return "call_emu_" + emulated_tool_id(prompt).removeprefix("toolu_emu_")


def emulated_tool_input(prompt: str) -> dict[str, str]:
    return {"query": DIRECTIVE.sub("", prompt).strip()[:20]}
