"""Triton kernels of :mod:`anydecode.kernels.residual`: residual sampling and one tree-verification node per row.

Both run one program per row and never write a distribution: the residual sampler races over ``max(0, p - q)``
in a single pass; the tree kernel keeps only the normalisers ``Z_1..Z_s`` of the residuals of the children rejected
so far (in registers) and recomputes ``r_{s-1}(i)`` from ``p(i)`` and ``q_1(i)..q_{s-1}(i)`` where needed.
"""

import torch
import triton
import triton.language as tl

from .common import coin, race_draws, race_result, race_update, reciprocal, stream_key


@triton.jit
def _residual_kernel(p_ptr, stride_p, q_ptr, stride_q, seed_ptr, row_ptr, pos_ptr, out_ptr, V,
                     BLOCK: tl.constexpr):
    r = tl.program_id(0)
    r64 = r.to(tl.int64)
    key = stream_key(tl.load(seed_ptr + r), tl.load(row_ptr + r), tl.load(pos_ptr + r))
    best_v = tl.full((BLOCK,), -1.0, tl.float32)
    best_i = tl.arange(0, BLOCK)
    for start in range(0, V, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        p = tl.load(p_ptr + r64 * stride_p + offs, mask=offs < V, other=0.0)
        q = tl.load(q_ptr + r64 * stride_q + offs, mask=offs < V, other=0.0)
        best_v, best_i = race_update(tl.maximum(p - q, 0.0), race_draws(key, offs), offs, best_v, best_i)
    token = race_result(best_v, best_i)
    if token < 0:  # no residual mass: draw from p
        best_v = tl.full((BLOCK,), -1.0, tl.float32)
        best_i = tl.arange(0, BLOCK)
        for start in range(0, V, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            p = tl.load(p_ptr + r64 * stride_p + offs, mask=offs < V, other=0.0)
            best_v, best_i = race_update(p, race_draws(key, offs), offs, best_v, best_i)
        token = race_result(best_v, best_i)
    tl.store(out_ptr + r, token.to(tl.int64))


@triton.jit
def _residual_at(p_row, tok_row, q_row, stride_qc, zs, upto, offs, V, HAS_Q: tl.constexpr, CP: tl.constexpr):
    """``r_upto(offs)``: ``p`` pushed through the residual updates of children ``0..upto-1`` (normalisers ``zs``)."""
    lanes = tl.arange(0, CP)
    r = tl.load(p_row + offs, mask=(offs >= 0) & (offs < V), other=0.0)
    for t in range(0, upto):
        if HAS_Q:
            q = tl.load(q_row + t * stride_qc + offs, mask=(offs >= 0) & (offs < V), other=0.0)
        else:
            q = (offs == tl.load(tok_row + t)).to(tl.float32)
        z = tl.sum(tl.where(lanes == t, zs, 0.0), 0)
        r = tl.where(z > 0.0, tl.maximum(r - q, 0.0) * reciprocal(z), r)
    return r


@triton.jit
def _tree_kernel(p_ptr, stride_p, tok_ptr, stride_t, q_ptr, stride_qn, stride_qc, count_ptr, seed_ptr, row_ptr,
                 pos_ptr, child_ptr, out_ptr, V, C, HAS_Q: tl.constexpr, CP: tl.constexpr, BLOCK: tl.constexpr):
    r = tl.program_id(0)
    r64 = r.to(tl.int64)
    p_row = p_ptr + r64 * stride_p
    tok_row = tok_ptr + r64 * stride_t
    q_row = q_ptr + r64 * stride_qn
    key = stream_key(tl.load(seed_ptr + r), tl.load(row_ptr + r), tl.load(pos_ptr + r))
    count = tl.minimum(tl.maximum(tl.load(count_ptr + r).to(tl.int32), 0), C)  # unchecked on a GPU: clamp
    lanes = tl.arange(0, CP)
    zs = tl.zeros((CP,), tl.float32)
    chosen = count * 0 - 1
    s = count * 0
    while (s < count) & (chosen < 0):
        x = tl.load(tok_row + s)
        r_x = _residual_at(p_row, tok_row, q_row, stride_qc, zs, s, x, V, HAS_Q, CP)
        if HAS_Q:
            q_x = tl.load(q_row + s * stride_qc + x, mask=(x >= 0) & (x < V), other=0.0)
        else:
            q_x = 1.0
        prob = tl.where(q_x > 0.0, tl.minimum(tl.math.div_rn(r_x, tl.where(q_x > 0.0, q_x, 1.0)), 1.0), 0.0)
        if coin(key, s) < prob:
            chosen = s
        else:
            acc = tl.zeros((BLOCK,), tl.float32)
            for start in range(0, V, BLOCK):
                offs = start + tl.arange(0, BLOCK)
                before = _residual_at(p_row, tok_row, q_row, stride_qc, zs, s, offs, V, HAS_Q, CP)
                if HAS_Q:
                    q = tl.load(q_row + s * stride_qc + offs, mask=offs < V, other=0.0)
                else:
                    q = (offs == x).to(tl.float32)
                acc += tl.maximum(before - q, 0.0)
            zs = tl.where(lanes == s, tl.sum(acc, 0), zs)
        s += 1
    if chosen >= 0:
        token = tl.load(tok_row + chosen).to(tl.int32)
    else:
        best = tl.full((BLOCK,), -1.0, tl.float32)
        idx = tl.arange(0, BLOCK)
        for start in range(0, V, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            w = _residual_at(p_row, tok_row, q_row, stride_qc, zs, count, offs, V, HAS_Q, CP)
            best, idx = race_update(w, race_draws(key, offs), offs, best, idx)
        token = race_result(best, idx)
    tl.store(child_ptr + r, chosen.to(tl.int64))
    tl.store(out_ptr + r, token.to(tl.int64))


def launch_residual(a, block: int) -> torch.Tensor:
    """Same arguments (``ResidualArgs``) and result as ``sample_residual_reference``."""
    n, vocab = a.p.shape
    out = torch.full((n,), -1, dtype=torch.int64, device=a.p.device)
    if n:
        _residual_kernel[(n,)](a.p, a.p.stride(0), a.q, a.q.stride(0), a.seeds, a.rows, a.positions, out, vocab,
                               BLOCK=block, num_warps=8)
    return out


def launch_tree(a, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Same arguments (``TreeArgs``) and results as ``verify_tree_node_reference``."""
    n, vocab = a.p.shape
    children = a.tokens.shape[1]
    child = torch.full((n,), -1, dtype=torch.int64, device=a.p.device)
    out = torch.full((n,), -1, dtype=torch.int64, device=a.p.device)
    if n:
        tokens = a.tokens if children else torch.zeros((n, 1), dtype=torch.int64, device=a.p.device)
        q = a.q if a.q is not None else a.p.unsqueeze(1)
        _tree_kernel[(n,)](a.p, a.p.stride(0), tokens, tokens.stride(0), q, q.stride(0), q.stride(1), a.counts,
                           a.seeds, a.rows, a.positions, child, out, vocab, children, HAS_Q=a.q is not None,
                           CP=max(16, triton.next_power_of_2(max(children, 1))), BLOCK=block,
                           num_warps=8)
    return child, out

