"""Chain verification of speculative drafts for a batch (Leviathan et al. 2023, Algorithm 1): the torch reference.

Row ``b`` holds ``lengths[b] <= k`` draft tokens ``x_0..x_{L-1}`` and the target's logits at each draft position
and one more (``(B, k + 1, V)``). The target distribution ``p_j`` is the sampler's warp of those logits (temperature,
top-k, top-p, min-p, :mod:`.warp`); ``q_j`` is the distribution the drafter drew ``x_j`` from, or the one-hot of
``x_j`` for a deterministic drafter (``draft_probs=None``). Then, as in
``anydecode.algorithms.speculative.verify.verify_chain``:

* draft ``j`` is accepted with probability ``min(1, p_j(x_j) / q_j(x_j))`` (0 where ``q_j(x_j) = 0``) while every
  earlier one was: ``accepted[b]`` is the number of leading acceptances;
* at the first rejection ``n`` the next token is drawn from ``normalise(max(0, p_n - q_n))`` (from ``p_n`` if that
  has no mass, which only rounding allows); when all ``L`` are accepted it is a bonus token drawn from ``p_L``;
* greedy rows (temperature 0) keep drafts while they equal the target's argmax (first maximum), and the next token
  is the argmax at the first mismatch (or after the last draft).

Randomness is the counter-based generator of :mod:`.rng`: the coin of draft ``j`` is coin 0 of stream
``(seeds[b], rows[b], offsets[b] + j)`` and the next token is raced (exponential race) on stream
``(seeds[b], rows[b], offsets[b] + n)`` with token lanes. ``offsets`` must move forward between verification steps
of the same sequence (the number of tokens already generated is the natural choice): reusing a stream reuses its
numbers and correlates the steps. A token is -1 where the distribution it is drawn from has no mass (a row of
``-inf`` logits).

Every function here takes the checked, normalised arguments of :class:`ChainArgs` (see
:func:`anydecode.kernels.dispatch.verify_chain` for the public entry point); the Triton kernel
(``kernels/jit/verify.py``) takes the same ones.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from . import rng
from .residual import residual_weights
from .warp import (as_rows, host_checkable, inverse_temperature_rows, normalised, reciprocal, temperature_weights_cpu,
                   top_p_rows, warp_rows)


@dataclasses.dataclass(frozen=True)
class ChainArgs:
    """Checked inputs of chain verification, all on one device.

    ``target_logits`` ``(B, k + 1, V)`` float (last dimension contiguous), ``draft_tokens`` ``(B, k)`` int64,
    ``draft_probs`` ``(B, k, V)`` float or None (one-hot drafts), and per-row int64 ``seeds``, ``rows``, ``offsets``,
    ``lengths``, float32 ``inv_t`` (``1 / temperature``, 0 when greedy), int64 ``top_k``, float32 ``top_p`` and
    ``min_p``, all ``(B,)``.
    """

    target_logits: torch.Tensor
    draft_tokens: torch.Tensor
    draft_probs: torch.Tensor | None
    seeds: torch.Tensor
    rows: torch.Tensor
    offsets: torch.Tensor
    lengths: torch.Tensor
    inv_t: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    min_p: torch.Tensor


def chain_args(target_logits: torch.Tensor, draft_tokens: torch.Tensor, draft_probs: torch.Tensor | None,
               seeds: torch.Tensor | int, offsets: torch.Tensor | int | None = None,
               lengths: torch.Tensor | int | None = None, temperature: torch.Tensor | float = 1.0,
               top_k: torch.Tensor | int = 0, top_p: torch.Tensor | float = 1.0, min_p: torch.Tensor | float = 0.0,
               rows: torch.Tensor | int | None = None) -> ChainArgs:
    """Check shapes, types and ranges and build :class:`ChainArgs`; ValueError names the bad argument."""
    batch, k, vocab, lens = check_chain(target_logits, draft_tokens, draft_probs, lengths)
    dev = target_logits.device
    check_settings(temperature, top_p, min_p)
    kk = as_rows(top_k, batch, torch.int64, dev, "top_k")
    pp = top_p_rows(top_p, batch, dev)
    mp = as_rows(min_p, batch, torch.float32, dev, "min_p")
    logits = target_logits if target_logits.stride(-1) == 1 else target_logits.contiguous()
    return ChainArgs(
        target_logits=logits,
        draft_tokens=draft_tokens.to(device=dev, dtype=torch.int64).contiguous(),
        draft_probs=None if draft_probs is None else draft_probs.to(dev).contiguous(),
        seeds=as_rows(seeds, batch, torch.int64, dev, "seeds"),
        rows=torch.arange(batch, device=dev) if rows is None else as_rows(rows, batch, torch.int64, dev, "rows"),
        offsets=as_rows(0 if offsets is None else offsets, batch, torch.int64, dev, "offsets"),
        lengths=lens, inv_t=inverse_temperature_rows(temperature, batch, dev), top_k=kk, top_p=pp, min_p=mp,
    )


def check_chain(target_logits: torch.Tensor, draft_tokens: torch.Tensor, draft_probs: torch.Tensor | None,
                lengths: torch.Tensor | int | None) -> tuple[int, int, int, torch.Tensor]:
    """Shapes and values of a chain batch: ``(B, k, V, lengths as a (B,) int64 tensor)``; ValueError names the bad
    argument."""
    if target_logits.dim() != 3 or not target_logits.is_floating_point():
        raise ValueError(f"target_logits must be a float tensor (batch, k + 1, vocab); got {target_logits.dtype} "
                         f"{tuple(target_logits.shape)}")
    batch, k1, vocab = target_logits.shape
    k = k1 - 1
    if k < 0:
        raise ValueError("target_logits needs k + 1 >= 1 positions (the bonus position at least)")
    if vocab >= rng.COIN_LANE:
        raise ValueError(f"vocab={vocab} must be below 2**31 (token ids are lanes of the random streams)")
    dev = target_logits.device
    if draft_tokens.shape != (batch, k) or draft_tokens.is_floating_point():
        raise ValueError(f"draft_tokens must be an integer tensor ({batch}, {k}); got {draft_tokens.dtype} "
                         f"{tuple(draft_tokens.shape)}")
    if draft_probs is not None and (draft_probs.shape != (batch, k, vocab) or not draft_probs.is_floating_point()):
        raise ValueError(f"draft_probs must be None (one-hot drafts) or a float tensor ({batch}, {k}, {vocab}); got "
                         f"{draft_probs.dtype} {tuple(draft_probs.shape)}")
    lens = as_rows(k if lengths is None else lengths, batch, torch.int64, dev, "lengths")
    if batch and host_checkable(lens) and not _within(lens, 0, k):
        raise ValueError(f"lengths must lie in [0, {k}] (the number of drafts per row); got {lens.tolist()}")
    if batch and k and host_checkable(draft_tokens) and not _within(draft_tokens, 0, vocab - 1):
        raise ValueError(f"draft_tokens must be token ids in [0, {vocab})")
    return batch, k, vocab, lens


def verify_chain_greedy_reference(target_logits: torch.Tensor, draft_tokens: torch.Tensor,
                                  lengths: torch.Tensor | int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy chain verification (:func:`verify_chain_reference` with every row at temperature 0) without the
    sampling settings and random streams: what the dispatcher runs for greedy batches off CUDA."""
    batch, k, _, lens = check_chain(target_logits, draft_tokens, None, lengths)
    dev = target_logits.device
    if batch == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=dev)
        return empty, empty.clone()
    return greedy_rows(target_logits, draft_tokens.to(device=dev, dtype=torch.int64), lens)


def greedy_rows(logits: torch.Tensor, drafts: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep drafts while they equal the first argmax; the next token is the argmax where that stops."""
    batch, k1, _ = logits.shape
    k = k1 - 1
    valid = torch.arange(k, device=logits.device).unsqueeze(0) < lengths.unsqueeze(1)
    n = leading_true((drafts == logits[:, :k].argmax(dim=-1)) & valid)
    return n, logits[torch.arange(batch, device=logits.device), n].argmax(dim=-1)


def _within(t: torch.Tensor, low: int, high: int) -> bool:
    """Every value of a non-empty integer tensor lies in ``[low, high]`` (one pass)."""
    least, most = torch.aminmax(t)
    return low <= int(least) and int(most) <= high


def check_settings(temperature: torch.Tensor | float, top_p: torch.Tensor | float,
                   min_p: torch.Tensor | float) -> None:
    """The ranges ``SamplingConfig`` accepts: temperature >= 0, 0 < top_p <= 1, 0 <= min_p <= 1 (numbers and CPU
    tensors; device tensors are not read back)."""
    for name, value, ok, accepted in (
            ("temperature", temperature, lambda t: t >= 0, ">= 0 (0 is greedy)"),
            ("top_p", top_p, lambda t: (t > 0) & (t <= 1), "lie in (0, 1]"),
            ("min_p", min_p, lambda t: (t >= 0) & (t <= 1), "lie in [0, 1]")):
        if not torch.is_tensor(value):
            if not ok(float(value)):
                raise ValueError(f"{name} must {accepted}; got {value}")
            continue
        t = value
        if host_checkable(t) and t.numel() and not bool(ok(t.to(torch.float64)).all()):
            shown = t.tolist() if torch.is_tensor(value) else value
            raise ValueError(f"{name} must {accepted}; got {shown}")


def leading_true(ok: torch.Tensor) -> torch.Tensor:
    """Number of leading True entries of each row of a ``(B, k)`` bool tensor."""
    if ok.shape[1] == 0:
        return torch.zeros(ok.shape[0], dtype=torch.int64, device=ok.device)
    return ok.to(torch.int64).cumprod(dim=1).sum(dim=1)


def verify_chain_reference(a: ChainArgs) -> tuple[torch.Tensor, torch.Tensor]:
    """``(accepted, next_token)``, int64 ``(B,)`` each: vectorised over rows and positions."""
    logits = a.target_logits
    batch, k1, vocab = logits.shape
    k = k1 - 1
    dev = logits.device
    if batch == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=dev)
        return empty, empty.clone()
    rows = torch.arange(batch, device=dev)
    positions = torch.arange(k1, device=dev)
    valid = positions[:k].unsqueeze(0) < a.lengths.unsqueeze(1)
    greedy = a.inv_t <= 0
    sampled = ~greedy

    n = torch.zeros(batch, dtype=torch.int64, device=dev)
    token = torch.full((batch,), -1, dtype=torch.int64, device=dev)
    if bool(greedy.all()):  # no boolean indexing: that would copy the logits
        return greedy_rows(logits, a.draft_tokens, a.lengths)
    if bool(greedy.any()):
        best = logits[greedy].argmax(dim=-1)
        ok = (a.draft_tokens[greedy] == best[:, :k]) & valid[greedy]
        n_g = leading_true(ok)
        n[greedy] = n_g
        token[greedy] = best.gather(1, n_g.unsqueeze(1)).squeeze(1)
    if bool(sampled.any()):
        keys = rng.stream_key(a.seeds.unsqueeze(1), a.rows.unsqueeze(1), a.offsets.unsqueeze(1) + positions)
        idx = rows[sampled]
        n_s, tok_s = _sampled_rows(a, idx, keys[idx], valid[idx])
        n[idx] = n_s
        token[idx] = tok_s
    return n, token


def sample_reference(logits: torch.Tensor, seeds: torch.Tensor | int, offsets: torch.Tensor | int | None,
                     temperature: float, top_k: int, top_p: float, min_p: float,
                     rows: torch.Tensor | int | None) -> torch.Tensor:
    """:func:`verify_chain_reference`'s token for rows without drafts (``(N, V)`` raw logits, one setting for all
    rows, temperature > 0), without building :class:`ChainArgs`: the CPU's plain sampling step, bit for bit."""
    n, vocab = logits.shape
    dev = logits.device
    check_settings(temperature, top_p, min_p)
    if n == 0:
        return torch.zeros(0, dtype=torch.int64, device=dev)
    rows = torch.arange(n) if rows is None else rows
    offsets = 0 if offsets is None else offsets
    if dev.type == "cpu" and n <= 8 and not torch.is_tensor(temperature) and _plain(top_k, top_p, min_p, vocab):
        weights = temperature_weights_cpu(logits, float(temperature))
        if weights is not None:
            words = np.broadcast_to(rng.stream_words(seeds, rows, offsets).reshape(-1), (n,))
            return torch.from_numpy(rng.race_dense_np(weights, words))
    keys = rng.stream_key(seeds, rows, offsets)
    keys = keys.expand(n) if keys.dim() == 0 else keys
    warped = warp_rows(logits, inverse_temperature_rows(temperature, n, dev), as_rows(top_k, n, torch.int64, dev,
                       "top_k"), top_p_rows(top_p, n, dev), as_rows(min_p, n, torch.float32, dev, "min_p"))
    return rng.race_argmax(normalised(warped.mass, warped.stats.z), keys)


def _plain(top_k: torch.Tensor | int, top_p: torch.Tensor | float, min_p: torch.Tensor | float, vocab: int) -> bool:
    """Whether these settings (numbers) leave every token in: temperature alone warps."""
    return not any(torch.is_tensor(v) for v in (top_k, top_p, min_p)) and not 0 < int(top_k) < vocab and \
        float(top_p) >= 1.0 and float(min_p) <= 0.0


def _sampled_rows(a: ChainArgs, idx: torch.Tensor, keys: torch.Tensor,
                  valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    everything = idx.numel() == a.target_logits.shape[0]

    def pick(t: torch.Tensor) -> torch.Tensor:
        return t if everything else t[idx]

    logits = pick(a.target_logits)
    batch, k1, vocab = logits.shape
    k = k1 - 1
    dev = logits.device

    def per_position(t: torch.Tensor) -> torch.Tensor:
        return pick(t).repeat_interleave(k1)

    warped = warp_rows(logits.reshape(batch * k1, vocab), per_position(a.inv_t), per_position(a.top_k),
                       per_position(a.top_p), per_position(a.min_p))
    mass = warped.mass.view(batch, k1, vocab)
    z = warped.stats.z.view(batch, k1)
    inv_z = reciprocal(z)
    drafts = pick(a.draft_tokens)
    q = None if a.draft_probs is None else pick(a.draft_probs)
    here = torch.arange(batch, device=dev)
    if k:
        px = mass[:, :k].gather(2, drafts.unsqueeze(2)).squeeze(2) * inv_z[:, :k]
        qx = torch.ones_like(px) if q is None else q.gather(2, drafts.unsqueeze(2)).squeeze(2).to(torch.float32)
        prob = torch.where(qx > 0, torch.clamp(px / torch.where(qx > 0, qx, torch.ones_like(qx)), max=1.0),
                           torch.zeros_like(px))
        n = leading_true((rng.coin_uniform(keys[:, :k]) < prob) & valid)
    else:
        n = torch.zeros(batch, dtype=torch.int64, device=dev)
    p_n = normalised(mass[here, n], z[here, n])
    rejected = n < pick(a.lengths)
    weights = p_n
    if k and bool(rejected.any()):
        at = n.clamp(max=k - 1)
        if q is None:
            q_n = torch.nn.functional.one_hot(drafts[here, at], vocab).to(torch.float32)
        else:
            q_n = q[here, at].to(torch.float32)
        weights = torch.where(rejected.unsqueeze(1), residual_weights(p_n, q_n), p_n)
    key_n = keys.gather(1, n.unsqueeze(1)).squeeze(1)
    token = rng.race_argmax(weights, key_n)
    fallback = token < 0
    if bool(fallback.any()):
        token[fallback] = rng.race_argmax(p_n[fallback], key_n[fallback])
    return n, token
