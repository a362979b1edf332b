"""Batched grammar masking and ASAp reweighting of logits, in place: the torch reference.

For every masked row ``r`` (logits row ``indices[r]``, or ``r``):

1. **Mask**: token ``i`` stays allowed when bit ``i % 32`` of word ``i // 32`` of ``bitmask[r]`` is set (the layout
   llguidance, xgrammar and outlines-core fill: ``(rows, ceil(V / 32))`` int32 words); every other token becomes
   ``-inf``, and so does every token at or beyond ``32 * words`` (a grammar that does not know a token cannot
   allow it; xgrammar leaves such tokens alone instead).
2. **Reweight** (ASAp, Park et al. 2024): the CSR list ``(indptr, tokens, values)`` gives, for row ``r``, the
   entries ``indptr[r] <= e < indptr[r + 1]``; ``values[e]`` is added to the logit of ``tokens[e]``, computed in
   float32 and rounded back to the logits' dtype (float64 logits: in float64, so that exact float64 cores such as
   the conformance toy models lose nothing). For ASAp a value is ``log EFG~(w t)`` of an explored child ``t``
   (``-inf`` for a child with no grammatical continuation). Adding to a masked token leaves ``-inf``. Several
   entries for one token add up.

Logits rows not named by ``indices`` are left untouched (in vLLM, requests that do not use anydecode). ``indices``
must be distinct. Unlike xgrammar's ``apply_token_bitmask_inplace``, ``indices`` picks logits rows for the mask
rows, so the bitmask only holds the rows that are masked.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from .warp import host_checkable

NEG_INF = float("-inf")


@dataclasses.dataclass(frozen=True)
class MaskArgs:
    """Checked inputs: ``logits`` ``(B, V)`` float (last dimension contiguous, written in place), ``bitmask``
    ``(R, W)`` int32, ``indices`` ``(R,)`` int64 or None (row ``r`` is logits row ``r``), and the CSR corrections
    ``indptr`` ``(R + 1,)`` int64, ``tokens`` ``(N,)`` int64, ``values`` ``(N,)`` float32 (float64 with float64
    logits), or all three None."""

    logits: torch.Tensor
    bitmask: torch.Tensor
    indices: torch.Tensor | None
    indptr: torch.Tensor | None
    tokens: torch.Tensor | None
    values: torch.Tensor | None


def mask_args(logits: torch.Tensor, bitmask: torch.Tensor, indices: torch.Tensor | None = None,
              indptr: torch.Tensor | None = None, tokens: torch.Tensor | None = None,
              values: torch.Tensor | None = None) -> MaskArgs:
    """Check shapes, types and ranges and build :class:`MaskArgs`; ValueError names the bad argument."""
    if logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError(f"logits must be a float tensor (batch, vocab); got {logits.dtype} {tuple(logits.shape)}")
    if logits.stride(-1) != 1:
        raise ValueError("logits must be contiguous in the vocabulary dimension (they are written in place)")
    batch, vocab = logits.shape
    if bitmask.dim() != 2 or bitmask.dtype != torch.int32:
        raise ValueError(f"bitmask must be an int32 tensor (rows, ceil(vocab / 32)); got {bitmask.dtype} "
                         f"{tuple(bitmask.shape)}")
    rows = bitmask.shape[0]
    dev = logits.device
    if indices is None:
        if rows > batch:
            raise ValueError(f"bitmask has {rows} rows for {batch} logits rows; pass indices to name the rows")
    else:
        if indices.shape != (rows,) or indices.is_floating_point():
            raise ValueError(f"indices must be an integer tensor ({rows},), one logits row per bitmask row; got "
                             f"{indices.dtype} {tuple(indices.shape)}")
        indices = indices.to(device=dev, dtype=torch.int64).contiguous()
        if rows and host_checkable(indices) and not 0 <= int(indices.min()) <= int(indices.max()) < batch:
            raise ValueError(f"indices must lie in [0, {batch}); got {indices.tolist()}")
    given = [x is not None for x in (indptr, tokens, values)]
    if any(given) and not all(given):
        raise ValueError("indptr, tokens and values come together (the CSR list of corrections) or not at all")
    if indptr is not None and tokens is not None and values is not None:
        if indptr.shape != (rows + 1,) or indptr.is_floating_point():
            raise ValueError(f"indptr must be an integer tensor ({rows + 1},); got {indptr.dtype} "
                             f"{tuple(indptr.shape)}")
        count = tokens.shape[0] if tokens.dim() == 1 else -1
        if tokens.dim() != 1 or tokens.is_floating_point() or values.shape != (count,):
            raise ValueError(f"tokens and values must be 1-d tensors of one length (integer ids, float corrections); "
                             f"got {tokens.dtype} {tuple(tokens.shape)} and {values.dtype} {tuple(values.shape)}")
        indptr = indptr.to(device=dev, dtype=torch.int64).contiguous()
        if host_checkable(indptr):
            bounds = indptr.tolist()
            if bounds[0] != 0 or bounds[-1] != count or any(a > b for a, b in zip(bounds, bounds[1:])):
                raise ValueError(f"indptr must rise from 0 to len(tokens)={count}; got {bounds}")
        tokens = tokens.to(device=dev, dtype=torch.int64).contiguous()
        if count and host_checkable(tokens):
            low, high = torch.aminmax(tokens)
            if int(low) < 0 or int(high) >= vocab:
                raise ValueError(f"correction tokens must lie in [0, {vocab}); got ids from {int(low)} to {int(high)}")
        values = values.to(device=dev, dtype=correction_dtype(logits.dtype)).contiguous()
    return MaskArgs(logits, bitmask.to(dev).contiguous(), indices, indptr, tokens, values)


def correction_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype corrections are added in: float64 for float64 logits, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def unpack_bitmask(bitmask: torch.Tensor, vocab: int) -> torch.Tensor:
    """``(R, vocab)`` bool: bit ``i % 32`` of word ``i // 32``; tokens beyond the words are False."""
    rows, words = bitmask.shape
    width = min(vocab, words * 32)
    if bitmask.device.type == "cpu":
        # numpy unpacks bits in one pass; int32 words are little-endian, so byte order is token order
        as_bytes = bitmask.contiguous().numpy().view(np.uint8).reshape(rows, words * 4)
        bits = torch.from_numpy(np.unpackbits(as_bytes, axis=1, count=width, bitorder="little")).bool()
    else:
        shifts = torch.arange(32, dtype=torch.int32, device=bitmask.device)
        bits = (((bitmask.unsqueeze(-1) >> shifts) & 1).reshape(rows, words * 32) != 0)[:, :width]
    if width == vocab:
        return bits
    pad = torch.zeros(rows, vocab - width, dtype=torch.bool, device=bitmask.device)
    return torch.cat([bits, pad], dim=1)


def apply_masks_reference(a: MaskArgs) -> torch.Tensor:
    """Mask and reweight the rows of ``a.logits`` in place; returns ``a.logits``."""
    logits = a.logits
    rows, vocab = a.bitmask.shape[0], logits.shape[1]
    if rows == 0 or vocab == 0:
        return logits
    forbidden = ~unpack_bitmask(a.bitmask, vocab)
    if a.indices is None:
        logits[:rows].masked_fill_(forbidden, NEG_INF)
    else:
        logits.index_copy_(0, a.indices, logits.index_select(0, a.indices).masked_fill_(forbidden, NEG_INF))
    if a.tokens is not None and a.values is not None and a.indptr is not None and a.tokens.numel():
        owner = torch.repeat_interleave(torch.arange(rows, device=logits.device), a.indptr.diff(),
                                        output_size=a.tokens.numel())
        row = owner if a.indices is None else a.indices[owner]
        if logits.dtype == a.values.dtype:  # one scatter-add; repeated tokens add one after the other
            logits.index_put_((row, a.tokens), a.values, accumulate=True)
            return logits
        # narrower logits: sum repeated (row, token) pairs first, then add once in float32 and round once
        cells, which = torch.unique(row * vocab + a.tokens, return_inverse=True)
        total = torch.zeros(cells.shape, dtype=torch.float32, device=logits.device).index_add_(0, which, a.values)
        r, t = cells // vocab, cells % vocab
        logits[r, t] = (logits[r, t].to(torch.float32) + total).to(logits.dtype)
    return logits
