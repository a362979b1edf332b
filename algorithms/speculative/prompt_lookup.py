"""Prompt lookup drafting: match the last n-gram of the context earlier in the context and propose what followed
it (Saxena 2023; transformers' ``prompt_lookup_num_tokens``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from ..contracts.config import DecoderConfig, config_field
from .draft import AdaptiveDraftLength, Draft, Drafter


@dataclasses.dataclass(frozen=True)
class PromptLookupConfig(DecoderConfig):
    """Settings of the prompt-lookup drafter."""

    owner = "drafter"

    num_draft_tokens: int = config_field(10, ge=1, help="draft length (the start value when adaptive)")
    max_ngram: int = config_field(3, ge=1, help="longest n-gram matched; shorter ones are tried after it")
    min_ngram: int = config_field(1, ge=1, help="shortest n-gram matched")
    adaptive: bool = config_field(True, help="lengthen drafts after full acceptance, shorten after a rejection")
    max_draft_tokens: int = config_field(32, ge=1, help="cap of the adaptive draft length")

    def validate(self) -> None:
        super().validate()
        from ..contracts.errors import ConfigError

        if self.min_ngram > self.max_ngram:
            raise ConfigError(f"min_ngram={self.min_ngram} must be <= max_ngram={self.max_ngram}")


def find_continuation(tokens: np.ndarray, max_ngram: int, min_ngram: int, length: int,
                      latest: bool = False) -> list[int]:
    """What followed the earliest (or ``latest``) earlier occurrence of the context's last n-gram, longest n first."""
    total = tokens.shape[0]
    for n in range(min(max_ngram, total - 1), min_ngram - 1, -1):
        windows = np.lib.stride_tricks.sliding_window_view(tokens[:-1], n)
        hits = np.flatnonzero((windows == tokens[-n:]).all(axis=1))
        if hits.size:
            start = int(hits[-1] if latest else hits[0]) + n
            return tokens[start: start + length].tolist()
    return []


class PromptLookupDrafter(Drafter):
    """Deterministic n-gram drafts from the row's own context (prompt and generated tokens)."""

    cheap = True

    def __init__(self, config: PromptLookupConfig):
        self.config = config
        self.length = AdaptiveDraftLength(config.num_draft_tokens, config.max_draft_tokens, config.adaptive)

    def start(self, prompts: Sequence[Sequence[int]]) -> None:
        self.length.start(len(prompts))

    def propose(self, contexts: Sequence[Sequence[int]], limits: Sequence[int]) -> list[Draft]:
        out = []
        for row, (context, limit) in enumerate(zip(contexts, limits)):
            want = min(limit, self.length[row])
            if want <= 0 or len(context) < 2:
                out.append(Draft())
                continue
            tokens = np.asarray(context, dtype=np.int64)
            out.append(Draft(find_continuation(tokens, self.config.max_ngram, self.config.min_ngram, want)))
        return out

    def feedback(self, row: int, draft: Draft, accepted_path: Sequence[int]) -> None:
        self.length.update(row, len(draft), len(accepted_path))
