"""Triton kernel of :func:`anydecode.kernels.warp.warp_probs_reference`: one program per row."""

import torch
import triton
import triton.language as tl

from .common import reciprocal, row_argmax, warp_row_stats, warped_block


@triton.jit
def _warp_probs_kernel(logits_ptr, stride_row, out_ptr, stride_out, inv_t_ptr, top_k_ptr, top_p_ptr, min_p_ptr,
                       m_ptr, thr_ptr, cut_ptr, z_ptr, n, BLOCK: tl.constexpr, RBLOCK: tl.constexpr):
    row = tl.program_id(0)
    src = logits_ptr + row.to(tl.int64) * stride_row
    dst = out_ptr + row.to(tl.int64) * stride_out
    inv_t = tl.load(inv_t_ptr + row)
    if inv_t > 0.0:
        min_p = tl.load(min_p_ptr + row)
        m, thr, cut, z = warp_row_stats(src, n, inv_t, tl.load(top_k_ptr + row), tl.load(top_p_ptr + row), min_p,
                                        BLOCK, RBLOCK)
        tl.store(m_ptr + row, m)
        tl.store(thr_ptr + row, thr.to(tl.int64))
        tl.store(cut_ptr + row, cut.to(tl.int64))
        tl.store(z_ptr + row, z)
        for start in range(0, n, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            tl.store(dst + offs, warped_block(src, offs, n, inv_t, m, thr, cut, reciprocal(z), min_p), mask=offs < n)
    else:
        best = row_argmax(src, n, BLOCK)
        for start in range(0, n, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            tl.store(dst + offs, (offs == best).to(tl.float32), mask=offs < n)


def launch(logits: torch.Tensor, inv_t: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
           min_p: torch.Tensor, block: int) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Warped probabilities ``(n, V)`` float32 and the stats ``(m, thr, cut, z)`` of sampled rows."""
    n, vocab = logits.shape
    out = torch.empty((n, vocab), dtype=torch.float32, device=logits.device)
    m = torch.zeros(n, dtype=torch.float32, device=logits.device)
    thr = torch.zeros(n, dtype=torch.int64, device=logits.device)
    cut = torch.zeros(n, dtype=torch.int64, device=logits.device)
    z = torch.zeros(n, dtype=torch.float32, device=logits.device)
    if n and vocab:
        _warp_probs_kernel[(n,)](logits, logits.stride(0), out, out.stride(0), inv_t, top_k, top_p, min_p,
                                 m, thr, cut, z, vocab, BLOCK=block,
                                 RBLOCK=min(block, 256), num_warps=8)
    return out, (m, thr, cut, z)
