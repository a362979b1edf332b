"""Triton kernel of :func:`anydecode.kernels.masking.apply_masks_reference`: every masked row in one launch.

Grid ``(rows, ceil(V / BLOCK))``. A program reads ``BLOCK / 32`` mask words, expands them to a ``(words, 32)`` tile
of bits (no gathers) and writes ``-inf`` where a bit is clear; allowed logits are neither read nor written, so the
traffic is the mask plus one store per forbidden token. It then scans the row's CSR corrections in chunks, keeps
those whose token falls in its block, merges duplicates of a chunk in registers (so repeated tokens add up) and
adds them to the (already masked) logits; a block barrier orders its own stores before those loads.
"""

import torch
import triton
import triton.language as tl

NEG_INF = tl.constexpr(float("-inf"))


@triton.jit
def _mask_kernel(logits_ptr, stride_row, n_rows, index_ptr, mask_ptr, stride_mask, n_words, indptr_ptr, token_ptr,
                 value_ptr, n_entries, V, HAS_INDEX: tl.constexpr, HAS_CORR: tl.constexpr, WORDS: tl.constexpr,
                 CHUNK: tl.constexpr, F64: tl.constexpr):
    r = tl.program_id(0)
    blk = tl.program_id(1)
    if HAS_INDEX:
        row = tl.load(index_ptr + r)
    else:
        row = r.to(tl.int64)
    # values are not checked on a GPU: a row index out of range writes nothing (its vocabulary is taken as empty)
    V = tl.where((row >= 0) & (row < n_rows), V, 0)
    row = tl.minimum(tl.maximum(row, 0), n_rows - 1)
    base = logits_ptr + row * stride_row
    word = blk * WORDS + tl.arange(0, WORDS)
    words = tl.load(mask_ptr + r.to(tl.int64) * stride_mask + word, mask=word < n_words, other=0)
    shift = tl.arange(0, 32)
    bit = (words[:, None] >> shift[None, :]) & 1
    offs = word[:, None] * 32 + shift[None, :]
    forbidden = (offs < V) & (bit == 0)
    tl.store(base + offs, tl.full((WORDS, 32), NEG_INF, tl.float32), mask=forbidden)
    if HAS_CORR:
        lo = tl.maximum(tl.load(indptr_ptr + r), 0)
        hi = tl.minimum(tl.load(indptr_ptr + r + 1), n_entries)
        first_tok = blk * WORDS * 32
        last_tok = first_tok + WORDS * 32
        lane = tl.arange(0, CHUNK)
        tl.debug_barrier()
        for start in range(lo, hi, CHUNK):
            entry = start + lane
            tok = tl.load(token_ptr + entry, mask=entry < hi, other=-1)
            val = tl.load(value_ptr + entry, mask=entry < hi, other=0.0)
            mine = (entry < hi) & (tok >= first_tok) & (tok < last_tok) & (tok < V)
            same = (tok[:, None] == tok[None, :]) & mine[:, None] & mine[None, :]
            total = tl.sum(tl.where(same, val[None, :], 0.0), 1)
            earlier = tl.sum((same & (lane[None, :] < lane[:, None])).to(tl.int32), 1)
            lead = mine & (earlier == 0)
            if F64:  # float64 logits: corrections come and are added in float64
                cur64 = tl.load(base + tok, mask=lead, other=0.0).to(tl.float64)
                tl.store(base + tok, cur64 + total.to(tl.float64), mask=lead)
            else:
                cur = tl.load(base + tok, mask=lead, other=0.0).to(tl.float32)
                tl.store(base + tok, cur + total, mask=lead)
            tl.debug_barrier()


def launch(a, block: int) -> torch.Tensor:
    """Same arguments (``MaskArgs``) and result as ``apply_masks_reference``."""
    logits = a.logits
    rows, n_words = a.bitmask.shape
    vocab = logits.shape[1]
    if rows == 0 or vocab == 0:
        return logits
    words = max(block, 32) // 32
    has_corr = a.tokens is not None and a.tokens.numel() > 0
    grid = (rows, triton.cdiv(vocab, words * 32))
    index = a.indices if a.indices is not None else a.bitmask
    indptr = a.indptr if has_corr else a.bitmask
    tokens = a.tokens if has_corr else a.bitmask
    values = a.values if has_corr else a.bitmask
    _mask_kernel[grid](logits, logits.stride(0), logits.shape[0], index, a.bitmask, a.bitmask.stride(0), n_words,
                       indptr, tokens, values, tokens.numel(), vocab, HAS_INDEX=a.indices is not None,
                       HAS_CORR=has_corr, WORDS=words, CHUNK=32, F64=logits.dtype == torch.float64)
    return logits
