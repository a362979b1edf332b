"""Triton kernel of :func:`anydecode.kernels.diverse_beam.beam_step_reference`: one program per prompt.

The groups of a prompt depend on each other (group ``g`` is penalised by what groups ``< g`` chose), so one
program walks them in order: the tokens chosen so far sit in a small scratch row (the penalty of a block of tokens
is a comparison with each of them), the running top-``keep`` list in registers. Each block
of ``BLOCK`` candidates enters the list only while its best candidate beats the list's worst (ranked by score, then
by lower flat index); after the first blocks that test fails at once, so a block costs one reduction. The list is
sorted at the end of the group, its first ``S`` tokens that are not end-of-sequence become the group's choices.
"""

import torch
import triton
import triton.language as tl

BIG = tl.constexpr(2**62)


@triton.jit
def _worst(top_v, top_i, valid):
    """Value and flat index of the worst entry of the running list (lowest value, then highest index)."""
    wv = tl.min(tl.where(valid, top_v, float("inf")), 0)
    wi = tl.max(tl.where(valid & (top_v == wv), top_i, -1), 0)
    return wv, wi


@triton.jit
def _beam_step_kernel(logp_ptr, stride_row, score_ptr, eos_ptr, n_eos, done_ptr, chosen_ptr, out_score_ptr,
                      out_beam_ptr, out_token_ptr, V, width, groups, size, keep, penalty, pad,
                      KP: tl.constexpr, EP: tl.constexpr, BLOCK: tl.constexpr):
    p = tl.program_id(0)
    dtype = logp_ptr.dtype.element_ty
    slot = tl.arange(0, KP)
    valid = slot < keep
    eos = tl.load(eos_ptr + tl.arange(0, EP), mask=tl.arange(0, EP) < n_eos, other=-1)
    chosen_row = chosen_ptr + p.to(tl.int64) * width  # this prompt's choices so far, -1 where none
    for g in range(0, groups):
        top_v = tl.full((KP,), float("-inf"), dtype)
        top_i = BIG + slot.to(tl.int64)  # distinct placeholders, each worse than any real candidate
        wv, wi = _worst(top_v, top_i, valid)
        for j in range(0, size):
            row = (p * width + g * size + j).to(tl.int64)
            running = tl.load(score_ptr + row)
            for start in range(0, V, BLOCK):
                offs = start + tl.arange(0, BLOCK)
                x = tl.load(logp_ptr + row * stride_row + offs, mask=offs < V, other=float("-inf"))
                hits = tl.zeros((BLOCK,), tl.float32)
                for c in range(0, g * size):  # Hamming: how many earlier beams chose each token
                    hits += (offs == tl.load(chosen_row + c)).to(tl.float32)
                total = (x - (hits * penalty).to(dtype)) + running
                flat = tl.where(offs < V, (j * V + offs).to(tl.int64), BIG)
                alive = offs < V
                bv = tl.max(tl.where(alive, total, float("-inf")), 0)
                if bv >= wv:  # most blocks stop here after the first ones
                    bi = tl.min(tl.where(alive & (total == bv), flat, BIG), 0)
                    while (bi < BIG) & ((bv > wv) | ((bv == wv) & (bi < wi))):
                        replace = valid & (top_v == wv) & (top_i == wi)
                        top_v = tl.where(replace, bv, top_v)
                        top_i = tl.where(replace, bi, top_i)
                        wv, wi = _worst(top_v, top_i, valid)
                        alive = alive & (flat != bi)
                        bv = tl.max(tl.where(alive, total, float("-inf")), 0)
                        bi = tl.min(tl.where(alive & (total == bv), flat, BIG), 0)
        # sort the list (best first), write it, and record the group's choices for the groups after it
        remaining = valid
        filled = size * 0
        group_done = tl.load(done_ptr + p * groups + g) != 0
        out = (p * groups + g).to(tl.int64) * keep
        for o in range(0, keep):
            ov = tl.max(tl.where(remaining, top_v, float("-inf")), 0)
            oi = tl.min(tl.where(remaining & (top_v == ov), top_i, BIG), 0)
            remaining = remaining & (top_i != oi)
            token = oi % V
            tl.store(out_score_ptr + out + o, ov)
            tl.store(out_beam_ptr + out + o, oi // V)
            tl.store(out_token_ptr + out + o, token)
            is_eos = tl.sum((eos == token).to(tl.int32), 0) > 0
            take = (group_done == 0) & (is_eos == 0) & (filled < size)
            tl.store(chosen_row + g * size + filled, token, mask=take)
            filled += take.to(tl.int32)
        lanes = tl.arange(0, KP)
        padding = tl.full((KP,), pad, tl.int64)
        tl.store(chosen_row + g * size + lanes, padding, mask=lanes < tl.where(group_done, size, 0))
        tl.debug_barrier()  # the stores above are read by every thread of the next group


def launch(a, block: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same arguments (``BeamStepArgs``) and results as ``beam_step_reference``."""
    rows, vocab = a.logprobs.shape
    prompts, groups = a.done.shape
    dev = a.logprobs.device
    scores = torch.empty((prompts, groups, a.keep), dtype=a.logprobs.dtype, device=dev)
    beams = torch.empty((prompts, groups, a.keep), dtype=torch.int64, device=dev)
    tokens = torch.empty((prompts, groups, a.keep), dtype=torch.int64, device=dev)
    if prompts == 0:
        return scores, beams, tokens
    width = rows // prompts
    eos = a.eos if a.eos.numel() else torch.full((1,), -1, dtype=torch.int64, device=dev)
    chosen = torch.full((prompts, width), -1, dtype=torch.int64, device=dev)
    _beam_step_kernel[(prompts,)](
        a.logprobs, a.logprobs.stride(0), a.beam_scores, eos, a.eos.numel(), a.done.to(torch.int8), chosen, scores,
        beams, tokens, vocab, width, groups, width // groups, a.keep, a.penalty, a.pad,
        KP=max(16, triton.next_power_of_2(max(a.keep, width // groups))),
        EP=max(16, triton.next_power_of_2(max(a.eos.numel(), 1))), BLOCK=block, num_warps=8,
    )
    return scores, beams, tokens
