"""What every runtime adapter returns to its users: one result type for transformers, llama.cpp and vLLM."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class GeneratedSequence:
    """One returned sequence: its text and ids (prompt excluded), why it ended, its score, the prompt it continues."""

    text: str
    token_ids: list[int]
    finish_reason: str
    score: float | None = None
    prompt_index: int = 0


@dataclasses.dataclass
class Generation:
    """A decoder's sequences for one or more prompts (best first per prompt) and its statistics.

    ``text``, ``token_ids`` and ``finish_reason`` are the first sequence's, for the common one-prompt case.
    """

    decoder: str
    runtime: str
    sequences: list[GeneratedSequence]
    stats: dict[str, Any]
    prompt_token_ids: list[list[int]] = dataclasses.field(default_factory=list)

    @property
    def first(self) -> GeneratedSequence:
        return self.sequences[0] if self.sequences else GeneratedSequence("", [], "length")

    @property
    def text(self) -> str:
        return self.first.text

    @property
    def token_ids(self) -> list[int]:
        return self.first.token_ids

    @property
    def finish_reason(self) -> str:
        return self.first.finish_reason

    def for_prompt(self, index: int) -> list[GeneratedSequence]:
        return [s for s in self.sequences if s.prompt_index == index]
