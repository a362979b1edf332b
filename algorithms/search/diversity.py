"""Diversity penalties between beam groups (Vijayakumar et al., Diverse Beam Search, 2018).

Groups are expanded in order at each step; group ``g`` subtracts ``penalty`` times a dissimilarity count from its
log-probabilities before choosing:

* ``hamming``: how often each token was chosen at this step by the beams of groups before ``g`` (the paper's best
  performer; transformers 4.x's ``HammingDiversityLogitsProcessor`` computes the same);
* ``ngram``: how often the n-gram a candidate would complete (its beam's last ``n - 1`` generated tokens plus the
  token) occurs in the generated text of the earlier groups' beams after this step.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch


def hamming_penalty(previous_tokens: torch.Tensor, vocab_size: int, penalty: float, dtype: torch.dtype) -> torch.Tensor:
    """``penalty * count(token)`` over the tokens earlier groups chose at this step, shape ``(vocab,)``."""
    counts = torch.bincount(previous_tokens.to(torch.long), minlength=vocab_size)
    return (penalty * counts).to(dtype)


def ngram_penalty(beams: Sequence[Sequence[int]], previous: Sequence[Sequence[int]], n: int, vocab_size: int,
                  penalty: float, dtype: torch.dtype) -> torch.Tensor:
    """``penalty * count`` of the n-gram each beam's candidate tokens complete, shape ``(len(beams), vocab)``."""
    out = torch.zeros(len(beams), vocab_size, dtype=dtype)
    if not previous:
        return out
    follow: dict[tuple[int, ...], Counter[int]] = {}
    for seq in previous:
        for i in range(len(seq) - n + 1):
            follow.setdefault(tuple(seq[i: i + n - 1]), Counter())[int(seq[i + n - 1])] += 1
    for row, seq in enumerate(beams):
        if len(seq) < n - 1:
            continue
        counter = follow.get(tuple(seq[len(seq) - (n - 1):]) if n > 1 else ())
        if counter:
            tokens = torch.tensor(list(counter.keys()), dtype=torch.long)
            out[row, tokens] = torch.tensor([penalty * c for c in counter.values()], dtype=dtype)
    return out
