"""Triton kernel of chain verification (:func:`anydecode.kernels.verify.verify_chain_reference`), one launch.

Grid ``(B, k + 1)``: program ``(b, j)`` warps the target logits of position ``j`` (statistics only, nothing is
written per token), and for a draft position tests the draft with its coin. It stores its statistics and its
verdict in a small scratch buffer and increments the row's arrival counter (an acquire-release atomic after a block
barrier). The program that arrives last for row ``b`` sees every verdict, counts the leading acceptances ``n`` and
draws the next token by the exponential race over ``max(0, p_n - q_n)`` (or ``p_n``), re-reading only row ``n`` of the
logits and of ``q``. Every position of every row runs in parallel, so a batch of 64 rows with 8 drafts keeps 576
programs busy; the normalised residual is never written.
"""

import torch
import triton
import triton.language as tl

from .common import (
    coin,
    float_key,
    kept,
    race_draws,
    race_result,
    race_update,
    reciprocal,
    row_argmax,
    stream_key,
    warp_row_stats,
    warped_block,
)


@triton.jit
def _chain_kernel(logits_ptr, stride_lb, stride_lj, draft_ptr, stride_db, q_ptr, stride_qb, stride_qj,
                  seed_ptr, row_ptr, offset_ptr, length_ptr, inv_t_ptr, top_k_ptr, top_p_ptr, min_p_ptr,
                  stat_f_ptr, stat_i_ptr, counter_ptr, out_n_ptr, out_token_ptr, V, K,
                  HAS_Q: tl.constexpr, KP: tl.constexpr, BLOCK: tl.constexpr, RBLOCK: tl.constexpr):
    b = tl.program_id(0)
    j = tl.program_id(1)
    b64 = b.to(tl.int64)
    length = tl.minimum(tl.maximum(tl.load(length_ptr + b).to(tl.int32), 0), K)  # unchecked on a GPU: clamp
    inv_t = tl.load(inv_t_ptr + b)
    min_p = tl.load(min_p_ptr + b)
    seed = tl.load(seed_ptr + b)
    row_id = tl.load(row_ptr + b)
    offset = tl.load(offset_ptr + b)
    k1 = K + 1
    slot = b64 * k1 + j
    src = logits_ptr + b64 * stride_lb + j.to(tl.int64) * stride_lj
    if j <= length:
        x = tl.load(draft_ptr + b64 * stride_db + j, mask=j < length, other=0)
        if inv_t > 0.0:
            m, thr, cut, z = warp_row_stats(src, V, inv_t, tl.load(top_k_ptr + b), tl.load(top_p_ptr + b), min_p,
                                            BLOCK, RBLOCK)
            tl.store(stat_f_ptr + slot * 2, m)
            tl.store(stat_f_ptr + slot * 2 + 1, z)
            tl.store(stat_i_ptr + slot * 4, thr.to(tl.int64))
            tl.store(stat_i_ptr + slot * 4 + 1, cut.to(tl.int64))
            if j < length:
                x_ok = (x >= 0) & (x < V)  # an out-of-range draft has probability 0
                s_x = tl.load(src + x, mask=x_ok, other=float("-inf")).to(tl.float32) * inv_t
                e_x = tl.exp(s_x - m)
                is_kept = kept(float_key(s_x), x, e_x, thr, cut, min_p) & (z > 0.0)
                p_x = tl.where(is_kept, e_x * reciprocal(z), 0.0)
                if HAS_Q:
                    q_x = tl.load(q_ptr + b64 * stride_qb + j.to(tl.int64) * stride_qj + x, mask=x_ok,
                                  other=0.0).to(tl.float32)
                else:
                    q_x = 1.0
                prob = tl.where(q_x > 0.0, tl.minimum(tl.math.div_rn(p_x, tl.where(q_x > 0.0, q_x, 1.0)), 1.0), 0.0)
                u = coin(stream_key(seed, row_id, offset + j), 0)
                tl.store(stat_i_ptr + slot * 4 + 2, (u < prob).to(tl.int64))
        else:
            best = row_argmax(src, V, BLOCK)
            tl.store(stat_i_ptr + slot * 4 + 3, best.to(tl.int64))
            tl.store(stat_i_ptr + slot * 4 + 2, (x == best).to(tl.int64))
    # publish this program's scratch writes, then count arrivals; the last arrival finishes the row
    tl.debug_barrier()
    arrived = tl.atomic_add(counter_ptr + b, 1, sem="acq_rel")
    if arrived == K:
        tl.debug_barrier()
        lanes = tl.arange(0, KP)
        in_draft = lanes < length
        verdict = tl.load(stat_i_ptr + (b64 * k1 + lanes) * 4 + 2, mask=in_draft, other=1, volatile=True)
        n = tl.min(tl.where(in_draft & (verdict == 0), lanes, length), 0)
        at = b64 * k1 + n
        if inv_t > 0.0:
            m_n = tl.load(stat_f_ptr + at * 2, volatile=True)
            z_n = tl.load(stat_f_ptr + at * 2 + 1, volatile=True)
            thr_n = tl.load(stat_i_ptr + at * 4, volatile=True).to(tl.uint32)
            cut_n = tl.load(stat_i_ptr + at * 4 + 1, volatile=True).to(tl.int32)
            rejected = n < length
            x_n = tl.load(draft_ptr + b64 * stride_db + n, mask=rejected, other=-1)
            x_n = tl.where(rejected, x_n, -1)
            q_len = tl.where(rejected, V, 0)
            key = stream_key(seed, row_id, offset + n)
            src_n = logits_ptr + b64 * stride_lb + n.to(tl.int64) * stride_lj
            q_row = q_ptr + b64 * stride_qb + n.to(tl.int64) * stride_qj
            inv_z = reciprocal(z_n)
            best_v = tl.full((BLOCK,), -1.0, tl.float32)
            best_i = tl.arange(0, BLOCK)
            for start in range(0, V, BLOCK):
                offs = start + tl.arange(0, BLOCK)
                p = warped_block(src_n, offs, V, inv_t, m_n, thr_n, cut_n, inv_z, min_p)
                if HAS_Q:
                    q = tl.load(q_row + offs, mask=offs < q_len, other=0.0).to(tl.float32)
                else:
                    q = (offs == x_n).to(tl.float32)
                best_v, best_i = race_update(tl.maximum(p - q, 0.0), race_draws(key, offs), offs, best_v, best_i)
            token = race_result(best_v, best_i)
            if token < 0:  # no residual mass (rounding only): draw from p
                best_v = tl.full((BLOCK,), -1.0, tl.float32)
                best_i = tl.arange(0, BLOCK)
                for start in range(0, V, BLOCK):
                    offs = start + tl.arange(0, BLOCK)
                    p = warped_block(src_n, offs, V, inv_t, m_n, thr_n, cut_n, inv_z, min_p)
                    best_v, best_i = race_update(p, race_draws(key, offs), offs, best_v, best_i)
                token = race_result(best_v, best_i)
        else:
            token = tl.load(stat_i_ptr + at * 4 + 3, volatile=True).to(tl.int32)
        tl.store(out_n_ptr + b, n.to(tl.int64))
        tl.store(out_token_ptr + b, token.to(tl.int64))


def launch(a, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Same arguments (``ChainArgs``) and results as ``verify_chain_reference``."""
    logits = a.target_logits
    batch, k1, vocab = logits.shape
    dev = logits.device
    out_n = torch.zeros(batch, dtype=torch.int64, device=dev)
    out_token = torch.full((batch,), -1, dtype=torch.int64, device=dev)
    if batch == 0:
        return out_n, out_token
    stat_f = torch.zeros((batch, k1, 2), dtype=torch.float32, device=dev)
    stat_i = torch.zeros((batch, k1, 4), dtype=torch.int64, device=dev)
    counter = torch.zeros(batch, dtype=torch.int32, device=dev)
    q = a.draft_probs
    drafts = a.draft_tokens if a.draft_tokens.numel() else torch.zeros((batch, 1), dtype=torch.int64, device=dev)
    q_arg = q if q is not None else logits
    _chain_kernel[(batch, k1)](
        logits, logits.stride(0), logits.stride(1), drafts, drafts.stride(0),
        q_arg, q_arg.stride(0), q_arg.stride(1),
        a.seeds, a.rows, a.offsets, a.lengths, a.inv_t, a.top_k, a.top_p, a.min_p,
        stat_f, stat_i, counter, out_n, out_token, vocab, k1 - 1,
        HAS_Q=q is not None, KP=max(16, triton.next_power_of_2(k1)), BLOCK=block, RBLOCK=min(block, 256),
        num_warps=8,
    )
    return out_n, out_token
