"""Sampling warpers, applied in transformers' order: temperature, then top-k, then top-p, then min-p.

Each works on the last dimension, so one call warps a batch. Removed tokens get ``-inf``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..contracts.config import SamplingConfig
from ..contracts.transform import LogitsTransform, TransformState

NEG_INF = float("-inf")
#: relative slack of the top-p boundary: a ``top_p`` written as a decimal may be stored just above it
TOP_P_SLACK = 2.0 ** -40


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return logits if temperature == 1.0 else logits / temperature


def apply_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, NEG_INF)


def apply_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches ``top_p`` (at least one token).

    Tokens are ordered by value, ties by token id, and kept while the mass strictly before them is below ``top_p``:
    the token whose mass before equals ``top_p`` is dropped, as transformers' ``TopPLogitsWarper`` drops it
    (``cumulative <= 1 - top_p``; 12 equal logits at ``top_p=0.5`` keep 6). Masses are compared unnormalised,
    ``sum(e before) >= top_p * sum(e)`` with ``e = exp(x - max)``, so a tie group at the top adds up to exact
    integers and lands on the boundary exactly (normalised probabilities ``1/12`` do not), and ``top_p`` is read
    as the decimal it was written as (``0.55`` is stored a little above 0.55: the target is lowered by a relative
    ``2**-40``, far below any mass a token can have at the boundary but above float64's representation error).
    The kernels' ``warp_probs`` decides the same way (its ``top_p`` is rounded down to float32).
    """
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True, stable=True)
    x = sorted_logits.to(torch.float64)
    top = x[..., :1]
    e = torch.exp(x - torch.where(torch.isfinite(top), top, torch.zeros_like(top)))
    # mass strictly before each token; a token is kept while the mass before it is below top_p
    before = torch.cumsum(e, dim=-1) - e
    remove_sorted = before >= top_p * (1.0 - TOP_P_SLACK) * e.sum(dim=-1, keepdim=True)
    remove_sorted[..., 0] = False
    remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, NEG_INF)


def apply_min_p(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    if min_p <= 0.0:
        return logits
    probs = torch.softmax(logits.to(torch.float64), dim=-1)
    threshold = min_p * probs.max(dim=-1, keepdim=True).values
    return logits.masked_fill(probs < threshold, NEG_INF)


def warp_logits(logits: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """Temperature, top-k, top-p, min-p, in that order. Greedy configs (temperature 0) pass through."""
    if config.greedy:
        return logits
    out = apply_temperature(logits, config.temperature)
    out = apply_top_k(out, config.top_k)
    out = apply_top_p(out, config.top_p)
    return apply_min_p(out, config.min_p)


def warped_probs(logits: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """The distribution a sampler with ``config`` draws from, in float64 (one-hot argmax when greedy)."""
    if config.greedy:
        return torch.nn.functional.one_hot(logits.argmax(dim=-1), logits.shape[-1]).to(torch.float64)
    return torch.softmax(warp_logits(logits.to(torch.float64), config), dim=-1)


class SamplingWarp(LogitsTransform):
    """The sampling warpers as a logits transform (the ``sample`` decoder's transform)."""

    def __init__(self, config: SamplingConfig):
        self.config = config

    def apply(self, state: TransformState, generated_ids: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        return warp_logits(logits, self.config)
