"""Drafting with a second, smaller model that shares the target's vocabulary (Leviathan et al. 2023).

The draft model runs in a model session of its own (``DecodeContext.draft_session``, holding the same
prompts). Under sampling, each draft token is drawn from ``q``: the draft model's distribution after the *same*
temperature, top-k and top-p as the target's, and that very ``q`` is reported for verification (reporting the
unwarped softmax instead is the bug behind transformers issues 32867 and 47932).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from ..contracts.config import DecoderConfig, SamplingConfig, config_field
from ..contracts.errors import ConfigError
from ..contracts.session import ModelSession
from ..sampling.warpers import warped_probs
from .draft import AdaptiveDraftLength, Draft, Drafter
from .verify import SeededCoins


@dataclasses.dataclass(frozen=True)
class DraftModelConfig(DecoderConfig):
    """Settings of the draft-model drafter."""

    owner = "drafter"

    num_draft_tokens: int = config_field(4, ge=1, help="draft length (the start value when adaptive)")
    adaptive: bool = config_field(True, help="lengthen drafts after full acceptance, shorten after a rejection")
    max_draft_tokens: int = config_field(16, ge=1, help="cap of the adaptive draft length")


def check_vocabularies(draft_vocab: int, target_vocab: int) -> None:
    if draft_vocab != target_vocab:
        raise ConfigError(
            f"the draft model's vocabulary ({draft_vocab} tokens) differs from the target's ({target_vocab} tokens); "
            "draft_model needs a model with the same tokenizer and vocabulary size"
        )


class DraftModelDrafter(Drafter):
    """Drafts by running a smaller model autoregressively in its own session, batched over rows.

    Rows may hold different numbers of committed tokens that the draft session has not seen; they are fed
    (teacher-forced) in the same steps in which other rows already draft, so every step is one draft forward.
    """

    def __init__(self, config: DraftModelConfig, sampling: SamplingConfig, session: ModelSession, target_vocab: int):
        check_vocabularies(int(session.vocab_size), int(target_vocab))
        self.config = config
        self.sampling = sampling
        self.session = session
        self.deterministic = sampling.greedy
        self.coins = SeededCoins(None if sampling.seed is None else sampling.seed + 1)
        self.length = AdaptiveDraftLength(config.num_draft_tokens, config.max_draft_tokens, config.adaptive)
        self.fed: list[list[int]] = []
        self.forward_passes = 0

    def start(self, prompts: Sequence[Sequence[int]]) -> None:
        if self.session.batch_size != len(prompts):
            raise ConfigError(
                f"the draft session holds {self.session.batch_size} rows but there are {len(prompts)} prompts"
            )
        self.length.start(len(prompts))
        self.fed = [self.session.tokens(row) for row in range(len(prompts))]
        # left padding of each row (a session's positions count it; its tokens() do not)
        self.padding = [self.session.length - len(held) for held in self.fed]

    def draft_distribution(self, logits: torch.Tensor) -> torch.Tensor:
        """The distribution drafts are drawn from and reported as ``q`` (same warpers as the target)."""
        return warped_probs(logits, self.sampling)

    def reported_distribution(self, logits: torch.Tensor, drawn_from: torch.Tensor) -> torch.Tensor:
        """The q given to verification: exactly the distribution the drafts were drawn from."""
        return drawn_from

    def propose(self, contexts: Sequence[Sequence[int]], limits: Sequence[int]) -> list[Draft]:
        rows = len(contexts)
        wants = [min(limit, self.length[row]) for row, limit in enumerate(limits)]
        if not any(wants):
            return [Draft() for _ in range(rows)]
        # keep the longest prefix the draft session holds correctly for every row, and at least one token to feed
        keep = None
        for row, context in enumerate(contexts):
            same = 0
            for a, b in zip(self.fed[row], context):
                if a != b:
                    break
                same += 1
            row_keep = min(same, len(context) - 1) + self.padding[row]
            keep = row_keep if keep is None else min(keep, row_keep)
        assert keep is not None
        if keep < self.session.length:
            self.session.truncate(keep)
        for row in range(rows):
            del self.fed[row][keep - self.padding[row]:]
        forced = [list(contexts[row][len(self.fed[row]):]) for row in range(rows)]
        steps = max(len(forced[row]) + wants[row] - 1 for row in range(rows))
        drafts: list[list[int]] = [[] for _ in range(rows)]
        dists: list[list[torch.Tensor]] = [[] for _ in range(rows)]
        first = min(len(f) for f in forced)
        block = [f[:first] for f in forced]
        position = first  # tokens fed per row so far in this call
        while True:
            logits = self.session.append(block)[:, -1]
            self.forward_passes += 1
            for row in range(rows):
                self.fed[row].extend(block[row])
            # rows whose forced tokens are all fed draft from these logits
            ready = [row for row in range(rows) if position >= len(forced[row]) and len(drafts[row]) < wants[row]]
            if ready:
                sel = logits[ready]
                if self.deterministic:
                    picks = sel.argmax(dim=-1).tolist()
                else:
                    q = self.draft_distribution(sel)
                    picks = self.coins.choose(q).tolist()
                    reported = self.reported_distribution(sel, q)
                    for i, row in enumerate(ready):
                        dists[row].append(reported[i])
                for i, row in enumerate(ready):
                    drafts[row].append(int(picks[i]))
            if position >= steps:
                break
            nxt = []
            for row in range(rows):
                if position < len(forced[row]):
                    nxt.append([forced[row][position]])
                elif len(drafts[row]) < wants[row]:
                    nxt.append([drafts[row][-1]])
                else:  # this row has its draft; feed a filler the next call will roll back
                    nxt.append([drafts[row][-1] if drafts[row] else forced[row][-1]])
            block = nxt
            position += 1
        out = []
        for row in range(rows):
            q = None if self.deterministic or not dists[row] else torch.stack(dists[row])[: wants[row]]
            out.append(Draft(drafts[row][: wants[row]], None, q))
        return out

    def feedback(self, row: int, draft: Draft, accepted_path: Sequence[int]) -> None:
        self.length.update(row, len(draft), len(accepted_path))
