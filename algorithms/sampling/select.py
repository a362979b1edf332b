"""Choosing the next token from (already transformed) logits: argmax, or a seeded categorical draw."""

from __future__ import annotations

import torch

#: dtypes whose CPU tensors numpy reads without a copy, and whose argmax numpy computes as torch does
_NUMPY_FLOATS = (torch.float32, torch.float64, torch.float16)


def argmax_token(row: torch.Tensor) -> int:
    """The greedy token of one row of logits ``(vocab,)``: the first index of its maximum (of its first NaN, if any,
    as in torch). A CPU row goes through numpy: one call instead of torch's argmax, whose dispatch costs tens of
    microseconds in a decoding loop whose forward pass has just evicted it from the caches."""
    if row.device.type == "cpu" and row.dtype in _NUMPY_FLOATS and not row.requires_grad:
        return int(row.numpy().argmax())
    return int(row.argmax())


def make_generator(seed: int | None) -> torch.Generator:
    """A CPU generator of the sampler's own: seeded runs repeat exactly and never touch torch's global state."""
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


def categorical(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Draw one index per row of ``probs`` (shape ``(batch, vocab)``, rows sum to 1) by inverse CDF.

    One uniform per row, compared with the float64 cumulative sum: exact up to float64 rounding, and the same
    on every runtime for the same probabilities and seed.
    """
    probs = probs.to(torch.float64)
    u = torch.rand(probs.shape[0], 1, generator=generator, dtype=torch.float64)
    cdf = torch.cumsum(probs, dim=-1)
    total = cdf[:, -1:]
    idx = torch.searchsorted(cdf, u * total, right=True)
    # u * total can equal the total by rounding; step back to the last token with mass
    idx = idx.clamp_max(probs.shape[-1] - 1)
    bad = probs.gather(-1, idx) <= 0
    if bool(bad.any()):
        last_nonzero = probs.shape[-1] - 1 - torch.argmax((probs.flip(-1) > 0).to(torch.int8), dim=-1, keepdim=True)
        idx = torch.where(bad, last_nonzero, idx)
    return idx.squeeze(-1)


class TokenSelector:
    """Greedy or seeded sampling over a batch of logits rows."""

    def __init__(self, greedy: bool, seed: int | None = None):
        self.greedy = greedy
        self.generator = None if greedy else make_generator(seed)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.greedy:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits.to(torch.float64), dim=-1)
        assert self.generator is not None
        return categorical(probs, self.generator)
