"""One step of diverse (group) beam search: Hamming penalty and per-group top-k candidates, the torch reference.

``P`` prompts hold ``W`` beams each, in ``G`` groups of ``S = W / G`` (rows ``p * W + g * S + j``). At every step
the groups are expanded in order (Vijayakumar et al. 2018; transformers 4.x's group beam search, and
``anydecode.algorithms.search.beam``): group ``g`` of prompt ``p``

1. subtracts ``penalty * count(t)`` from the log-probability of token ``t``, where ``count`` is how many beams of
   the earlier groups chose ``t`` at this step (``penalty * count`` is formed in float32, as
   ``algorithms/search/diversity.hamming_penalty`` does, then cast to the scores' dtype),
2. adds each beam's running score and ranks the ``S * V`` candidates (beam ``j``, token ``t``; flat index
   ``j * V + t``) by score, higher first, ties to the lower flat index,
3. keeps the best ``keep`` (beam search keeps ``max(2, 1 + #eos) * S``),
4. and "chooses" the first ``S`` kept candidates whose token is not an end-of-sequence token; those are the tokens
   the later groups are penalised against. A finished group (``done[p, g]``) chooses ``S`` times ``pad`` instead,
   as the search loop emits padding for it.

The caller turns the candidates into beams and finished hypotheses exactly as before (the loop over ranks in
``beam_search``), and gets the same choices the kernel used for the penalties. Returned: scores ``(P, G, keep)`` in
the dtype of ``logprobs``, beam (``0..S-1``, within the group) and token ``(P, G, keep)`` int64, sorted.
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class BeamStepArgs:
    """Checked inputs: ``logprobs`` ``(P * W, V)`` float32/float64 (last dimension contiguous), ``beam_scores``
    ``(P * W,)`` same dtype, ``eos`` ``(E,)`` int64, ``done`` ``(P, G)`` bool, and the integers/float below."""

    logprobs: torch.Tensor
    beam_scores: torch.Tensor
    groups: int
    penalty: float
    keep: int
    eos: torch.Tensor
    done: torch.Tensor
    pad: int


def beam_step_args(logprobs: torch.Tensor, beam_scores: torch.Tensor, num_beams: int, groups: int, penalty: float,
                   keep: int, eos: torch.Tensor | list[int] | tuple[int, ...] = (),
                   done: torch.Tensor | None = None, pad: int = 0) -> BeamStepArgs:
    """Check shapes and ranges; ValueError names the bad argument."""
    if logprobs.dim() != 2 or logprobs.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"logprobs must be a float32 or float64 tensor (prompts * num_beams, vocab); got "
                         f"{logprobs.dtype} {tuple(logprobs.shape)}")
    rows, vocab = logprobs.shape
    if num_beams < 1 or groups < 1 or num_beams % groups:
        raise ValueError(f"num_beams={num_beams} must be a positive multiple of groups={groups}")
    if rows % num_beams:
        raise ValueError(f"logprobs has {rows} rows, not a multiple of num_beams={num_beams}")
    size = num_beams // groups
    if not 1 <= keep <= size * vocab:
        raise ValueError(f"keep={keep} must lie in [1, {size * vocab}] (group size {size} times vocab {vocab})")
    dev = logprobs.device
    if beam_scores.shape != (rows,):
        raise ValueError(f"beam_scores must have shape ({rows},); got {tuple(beam_scores.shape)}")
    prompts = rows // num_beams
    if done is None:
        done = torch.zeros((prompts, groups), dtype=torch.bool, device=dev)
    elif done.shape != (prompts, groups):
        raise ValueError(f"done must have shape ({prompts}, {groups}); got {tuple(done.shape)}")
    eos_t = torch.as_tensor(eos, dtype=torch.int64, device=dev).reshape(-1)
    logp = logprobs if logprobs.stride(-1) == 1 else logprobs.contiguous()
    return BeamStepArgs(logp, beam_scores.to(device=dev, dtype=logp.dtype).contiguous(), groups, float(penalty),
                        int(keep), eos_t.contiguous(), done.to(device=dev, dtype=torch.bool).contiguous(), int(pad))


def top_candidates(total: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``keep`` largest entries of each row of ``total`` and their column, ties to the lower column, sorted.

    ``torch.topk`` gives the right values but an unspecified order among ties; the columns tied with the last kept
    value are re-chosen by position so that the result is canonical.
    """
    rows, cols = total.shape
    if keep < cols:
        # one more than kept: where it is below the last kept value, no tie crosses the cut and the kept set is
        # topk's; only the order inside ties is then fixed (by column), on ``keep`` entries
        top = torch.topk(total, keep + 1, dim=1)
        if not bool((top.values[:, keep] == top.values[:, keep - 1]).any()):
            columns, perm = top.indices[:, :keep].sort(dim=1)
            values = top.values[:, :keep].gather(1, perm)
            order = torch.sort(values, dim=1, descending=True, stable=True).indices
            return values.gather(1, order), columns.gather(1, order)
    kth = torch.topk(total, keep, dim=1).values[:, -1:]
    above = total > kth
    tied = total == kth
    need = keep - above.sum(dim=1, keepdim=True)
    chosen = above | (tied & (torch.cumsum(tied.to(torch.int64), dim=1) <= need))
    columns = chosen.nonzero()[:, 1].view(rows, keep)
    values = total.gather(1, columns)
    order = torch.sort(values, dim=1, descending=True, stable=True).indices
    return values.gather(1, order), columns.gather(1, order)


def beam_step_reference(a: BeamStepArgs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(scores, beams, tokens)``, each ``(P, G, keep)``: the candidates of every group of every prompt."""
    rows, vocab = a.logprobs.shape
    prompts, groups = a.done.shape
    width = rows // prompts if prompts else a.groups
    size = width // groups
    dev, dtype = a.logprobs.device, a.logprobs.dtype
    scores = torch.empty((prompts, groups, a.keep), dtype=dtype, device=dev)
    beams = torch.empty((prompts, groups, a.keep), dtype=torch.int64, device=dev)
    tokens = torch.empty((prompts, groups, a.keep), dtype=torch.int64, device=dev)
    if prompts == 0:
        return scores, beams, tokens
    logp = a.logprobs.view(prompts, width, vocab)
    running = a.beam_scores.view(prompts, width)
    chosen = torch.full((prompts, width), -1, dtype=torch.int64, device=dev)
    for g in range(groups):
        part = slice(g * size, (g + 1) * size)
        group = logp[:, part]
        if g > 0:
            earlier = chosen[:, : g * size]
            counts = torch.zeros((prompts, vocab + 1), dtype=torch.int64, device=dev)
            counts.scatter_add_(1, torch.where(earlier >= 0, earlier, vocab), torch.ones_like(earlier))
            group = group - (a.penalty * counts[:, :vocab]).to(dtype).unsqueeze(1)
        total = (group + running[:, part].unsqueeze(-1)).reshape(prompts, size * vocab)
        top_scores, flat = top_candidates(total, a.keep)
        scores[:, g], beams[:, g], tokens[:, g] = top_scores, flat // vocab, flat % vocab
        is_eos = torch.isin(tokens[:, g], a.eos)
        rank = torch.cumsum((~is_eos).to(torch.int64), dim=1) - 1
        pick = ~is_eos & (rank < size)
        picked = torch.full((prompts, size + 1), -1, dtype=torch.int64, device=dev)
        picked.scatter_(1, torch.where(pick, rank, size), torch.where(pick, tokens[:, g], -1))
        picked = torch.where(a.done[:, g].unsqueeze(1), torch.full_like(picked, a.pad), picked)
        chosen[:, part] = picked[:, :size]
    return scores, beams, tokens
