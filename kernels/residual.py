"""Residual sampling and the per-child residual updates of tree verification: the torch reference.

**Residual sampling.** After a rejected draft, speculative sampling draws from ``normalise(max(0, p - q))``. The
exponential race (:func:`anydecode.kernels.rng.race_argmax`) samples in proportion to the unnormalised weights
``w = max(0, p - q)``, so the residual is never normalised, summed or written: one pass over ``p`` and ``q``. A row
whose residual has no mass falls back to ``p`` (only rounding allows it: a rejection then has probability 0); a row
where ``p`` has no mass either gives -1. Random stream: ``(seeds[r], rows[r], positions[r])``, token lanes.

**Tree node (SpecInfer multi-step speculative sampling, Miao et al. 2024).** At a node with target distribution
``p`` and children ``x_1..x_C`` (drafted independently from ``q_1..q_C``), child ``s`` is accepted with probability
``min(1, r_{s-1}(x_s) / q_s(x_s))``, where ``r_0 = p`` and, after each rejected child,
``r_s = normalise(max(0, r_{s-1} - q_s))`` (``r_s = r_{s-1}`` if that has no mass, as in
``anydecode.algorithms.speculative.verify.residual_distribution``). If no child is accepted the next token is drawn
from ``r_C``. The update is what keeps the output distributed as ``p``. ``q=None`` means deterministic drafts
(``q_s`` the one-hot of ``x_s``). Coin ``s`` is coin ``s`` of the node's stream; the final draw races on the token
lanes of the same stream. The kernel recomputes ``r_{s-1}(i)`` from ``p(i)`` and the ``q_t(i)`` on the fly, so it
stores no residual either: child ``s`` costs one pass over ``p, q_1..q_s``.

As everywhere in :mod:`anydecode.kernels`, ``p`` and ``q`` are float32 probabilities (rows summing to 1; the race
does not need it, the acceptance ratio does).
"""

from __future__ import annotations

import dataclasses

import torch

from . import rng
from .warp import as_rows, host_checkable, reciprocal, row_sums


@dataclasses.dataclass(frozen=True)
class ResidualArgs:
    """Checked inputs of :func:`sample_residual_reference`: ``p`` and ``q`` ``(N, V)`` float32, per-row int64
    ``seeds``, ``rows``, ``positions`` ``(N,)``."""

    p: torch.Tensor
    q: torch.Tensor
    seeds: torch.Tensor
    rows: torch.Tensor
    positions: torch.Tensor


@dataclasses.dataclass(frozen=True)
class TreeArgs:
    """Checked inputs of :func:`verify_tree_node_reference`: ``p`` ``(N, V)`` float32, ``tokens`` ``(N, C)`` int64
    (children in the order they are tried), ``q`` ``(N, C, V)`` float32 or None (one-hot), ``counts`` ``(N,)`` int64
    (row ``r`` uses its first ``counts[r]`` children), per-row int64 ``seeds``, ``rows``, ``positions``."""

    p: torch.Tensor
    tokens: torch.Tensor
    q: torch.Tensor | None
    counts: torch.Tensor
    seeds: torch.Tensor
    rows: torch.Tensor
    positions: torch.Tensor


def _probs(x: torch.Tensor, name: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    if not x.is_floating_point() or (shape is not None and tuple(x.shape) != shape):
        want = "" if shape is None else f" of shape {shape}"
        raise ValueError(f"{name} must be a float tensor of probabilities{want}; got {x.dtype} {tuple(x.shape)}")
    return x.to(torch.float32).contiguous()


def _streams(n: int, dev: torch.device, seeds: torch.Tensor | int, positions: torch.Tensor | int | None,
             rows: torch.Tensor | int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (as_rows(seeds, n, torch.int64, dev, "seeds"),
            torch.arange(n, device=dev) if rows is None else as_rows(rows, n, torch.int64, dev, "rows"),
            as_rows(0 if positions is None else positions, n, torch.int64, dev, "positions"))


def residual_args(p: torch.Tensor, q: torch.Tensor, seeds: torch.Tensor | int,
                  positions: torch.Tensor | int | None = None, rows: torch.Tensor | int | None = None) -> ResidualArgs:
    if p.dim() != 2:
        raise ValueError(f"p must be (rows, vocab); got shape {tuple(p.shape)}")
    pp = _probs(p, "p")
    qq = _probs(q, "q", tuple(p.shape)).to(pp.device)
    seed_t, row_t, pos_t = _streams(p.shape[0], pp.device, seeds, positions, rows)
    return ResidualArgs(pp, qq, seed_t, row_t, pos_t)


def tree_args(p: torch.Tensor, tokens: torch.Tensor, q: torch.Tensor | None, seeds: torch.Tensor | int,
              counts: torch.Tensor | int | None = None, positions: torch.Tensor | int | None = None,
              rows: torch.Tensor | int | None = None) -> TreeArgs:
    if p.dim() != 2:
        raise ValueError(f"p must be (rows, vocab); got shape {tuple(p.shape)}")
    n, vocab = p.shape
    pp = _probs(p, "p")
    dev = pp.device
    if tokens.dim() != 2 or tokens.shape[0] != n or tokens.is_floating_point():
        raise ValueError(f"tokens must be an integer tensor ({n}, children); got {tokens.dtype} "
                         f"{tuple(tokens.shape)}")
    children = tokens.shape[1]
    qq = None if q is None else _probs(q, "q", (n, children, vocab)).to(dev)
    cnt = as_rows(children if counts is None else counts, n, torch.int64, dev, "counts")
    if n and host_checkable(cnt) and (int(cnt.min()) < 0 or int(cnt.max()) > children):
        raise ValueError(f"counts must lie in [0, {children}]; got {cnt.tolist()}")
    tok = tokens.to(device=dev, dtype=torch.int64).contiguous()
    if tok.numel() and host_checkable(tok) and bool(((tok < 0) | (tok >= vocab)).any()):
        raise ValueError(f"tokens must be token ids in [0, {vocab})")
    seed_t, row_t, pos_t = _streams(n, dev, seeds, positions, rows)
    return TreeArgs(pp, tok, qq, cnt, seed_t, row_t, pos_t)


def residual_weights(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``max(0, p - q)``: the unnormalised residual the race samples from."""
    return torch.clamp(p - q, min=0.0)


def sample_residual_reference(a: ResidualArgs) -> torch.Tensor:
    """One token per row from ``normalise(max(0, p - q))`` (``p`` without residual mass; -1 without any)."""
    keys = rng.stream_key(a.seeds, a.rows, a.positions)
    token = rng.race_argmax(residual_weights(a.p, a.q), keys)
    fallback = token < 0
    if bool(fallback.any()):
        token[fallback] = rng.race_argmax(a.p[fallback], keys[fallback])
    return token


def residual_step(r: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``normalise(max(0, r - q))`` per row of ``(N, V)`` probabilities (times ``1 / total``, the kernel's
    arithmetic), ``r`` where that has no mass."""
    diff = torch.clamp(r - q, min=0.0)
    total = row_sums(diff).unsqueeze(1)
    return torch.where(total > 0, diff * reciprocal(total), r)


def verify_tree_node_reference(a: TreeArgs) -> tuple[torch.Tensor, torch.Tensor]:
    """``(child, token)`` int64 ``(N,)``: the accepted child's index (or -1) and its token, or the token drawn from
    the last residual when no child is accepted (-1 where that has no mass)."""
    n, vocab = a.p.shape
    dev = a.p.device
    keys = rng.stream_key(a.seeds, a.rows, a.positions)
    child = torch.full((n,), -1, dtype=torch.int64, device=dev)
    token = torch.full((n,), -1, dtype=torch.int64, device=dev)
    r = a.p.clone()
    here = torch.arange(n, device=dev)
    for s in range(a.tokens.shape[1]):
        live = (child < 0) & (s < a.counts)
        if not bool(live.any()):
            break
        x = a.tokens[:, s]
        r_x = r[here, x]
        q_x = torch.ones_like(r_x) if a.q is None else a.q[here, s, x]
        prob = torch.where(q_x > 0, torch.clamp(r_x / torch.where(q_x > 0, q_x, torch.ones_like(q_x)), max=1.0),
                           torch.zeros_like(r_x))
        accept = live & (rng.coin_uniform(keys, s) < prob)
        child = torch.where(accept, torch.full_like(child, s), child)
        token = torch.where(accept, x, token)
        rejected = live & ~accept
        if bool(rejected.any()):
            q_s = torch.nn.functional.one_hot(x, vocab).to(torch.float32) if a.q is None else a.q[:, s]
            r = torch.where(rejected.unsqueeze(1), residual_step(r, q_s), r)
    none = child < 0
    if bool(none.any()):
        drawn = rng.race_argmax(r[none], keys[none])
        token[none] = drawn
    return child, token
