"""The emulator's deterministic words: the same prompt, the same text deltas, tool id and tool input."""

from __future__ import annotations

from llm_gateway.emulator import emulated_deltas, emulated_text, emulated_tool_id, emulated_tool_input


def test_emulated_deltas_are_deterministic_words_with_sentence_breaks() -> None:
    deltas = emulated_deltas("hello", 30)
    assert deltas == emulated_deltas("hello", 30)
    assert deltas != emulated_deltas("hello!", 30)
    assert len(deltas) == 30
    assert deltas[11].endswith(".\n") and deltas[23].endswith(".\n")
    assert deltas[-1].endswith(".") and not deltas[-1].endswith(" ")
    assert all(delta.endswith(" ") for i, delta in enumerate(deltas[:-1], 1) if i % 12)
    assert emulated_text("hello", 30) == "".join(deltas)
    assert emulated_deltas("hello", 0) == []
    assert emulated_deltas("hello", 1)[0].endswith(".")


def test_emulated_text_uses_non_ascii_words() -> None:
    text = "".join(emulated_text(f"prompt {i}", 50) for i in range(20))
    assert any(word in text for word in ("café", "naïve", "日本"))


def test_directives_are_hashed_but_removed_from_tool_input() -> None:
    prompt = "  find cheap flights to Paris [emu:tool=search]"
    assert emulated_text(prompt, 10) != emulated_text("  find cheap flights to Paris", 10)
    assert emulated_tool_input(prompt) == {"query": "find cheap flights t"}
    assert emulated_tool_id(prompt) == emulated_tool_id(prompt) != emulated_tool_id(prompt + " ")
    assert emulated_tool_id(prompt).startswith("toolu_emu_") and len(emulated_tool_id(prompt)) == len("toolu_emu_") + 12
