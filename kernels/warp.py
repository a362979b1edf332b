"""The sampler's warping (temperature, top-k, top-p, min-p) for a batch with per-row settings: the torch reference.

Semantics are those of ``anydecode.algorithms.sampling.warpers`` (transformers' order), written so that a kernel
can reach the same kept set with threshold searches instead of a sort. For one row with scaled logits
``s = logits * (1 / temperature)`` (float32), ``m = max(s)`` and ``e = exp(s - m)``:

1. **top-k** (``0 < k < V``): keep ``s >= `` the k-th largest value (every token tied with it stays).
2. **top-p** (``p < 1``): order the top-k survivors by value, ties by token id, and keep a token while the mass
   strictly before it is below ``p`` (the first always stays). In mass terms, with ``target = p * Z_k``
   (``Z_k = sum of e over the survivors``): the threshold value ``v`` is the largest value whose survivors
   ``>= v`` carry at least ``target``; all survivors above ``v`` stay, and of the tokens tied at ``v`` (in
   token order, ranks ``r = 0, 1, ...``) those with ``S_gt + r * e_v < target`` stay, where ``S_gt`` is the mass
   strictly above ``v``. When no value reaches the target (rounding, with ``p`` just below 1) every survivor stays.
3. **min-p** (``min_p > 0``): keep ``e >= min_p`` (that is, probability at least ``min_p`` times the top one).

The kept set is therefore ``{i : key_i > thr or (key_i == thr and i < cut)} and e_i >= min_p`` for a threshold
``thr`` on the order-preserving integer key of the float (:func:`float_key`) and a token-id cutoff ``cut`` inside
the tie group: this is what :func:`warp_stats` returns, with ``m`` and ``Z`` (the kept mass), and what the kernels
compute. The probability of a kept token is ``e / Z``, computed as ``e * (1 / Z)`` on both sides. Temperature 0 is
greedy: the one-hot of the first argmax.

Arithmetic is float32 (GPU logits are float32 or narrower); the reference in ``algorithms/sampling/warpers.py``
works in float64, so the two agree on the kept set except when a boundary falls within float32 rounding of a
token (tested in ``tests/unit/test_kernels_semantics.py``). A row without a finite logit has probability 0 everywhere.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

MASK32 = 0xFFFFFFFF
#: the top-p search of the reference ranks this many of the largest values first (then 8 times more, until the
#: nucleus is inside): usually a small share of the vocabulary, where a full sort would rank all of it
NUCLEUS_STEP = 1024


@dataclasses.dataclass(frozen=True)
class WarpStats:
    """Per-row results of the threshold searches; ``kept`` and ``probs`` rebuild the warped distribution.

    ``m``: max scaled logit (0 for a row without a finite one), ``thr``: key threshold (int64 holding a uint32),
    ``cut``: token-id cutoff inside the tie group at ``thr``, ``z``: kept mass (sum of ``e`` over kept tokens).
    """

    m: torch.Tensor
    thr: torch.Tensor
    cut: torch.Tensor
    z: torch.Tensor


def float_key(x: torch.Tensor) -> torch.Tensor:
    """An int64 in ``[0, 2**32)`` per float32 that orders like the floats: flip all bits of negatives, the sign bit
    of the rest (``-inf`` maps to 0x007FFFFF, ``0.0`` to 0x80000000). NaN is not supported."""
    # + 0.0 turns -0.0 into +0.0, so that keys are equal exactly when the floats are
    b = (x.to(torch.float32) + 0.0).contiguous().view(torch.int32).to(torch.int64) & MASK32
    return torch.where(b >= 0x80000000, b ^ MASK32, b | 0x80000000)


def as_rows(value: torch.Tensor | float | int, rows: int, dtype: torch.dtype, device: torch.device,
            name: str) -> torch.Tensor:
    """A per-row setting as a ``(rows,)`` tensor: a number is filled in on the device (no host-to-device copy, no
    synchronisation); a tensor must have ``rows`` entries (or one)."""
    if not torch.is_tensor(value):
        return torch.full((rows,), value, dtype=dtype, device=device)
    t = value.to(device=device, dtype=dtype)
    if t.dim() == 0 or t.shape == (1,):
        return t.reshape(1).expand(rows).contiguous()
    if t.shape != (rows,):
        raise ValueError(f"{name} has shape {tuple(t.shape)}; expected a scalar or ({rows},), one value per row")
    return t.contiguous()


def top_p_rows(value: torch.Tensor | float, rows: int, device: torch.device) -> torch.Tensor:
    """float32 ``top_p`` per row, rounded toward zero from the value given (a float64 number: ``0.6`` would round up
    to ``0.6000000238`` and keep the token whose mass before is exactly 0.6, e.g. 15 of 25 equal logits): ties
    at an exact boundary are then dropped as ``algorithms/sampling/warpers.py`` drops them."""
    if not torch.is_tensor(value):
        p32 = np.float32(value)
        if float(p32) > float(value):
            p32 = np.nextafter(p32, np.float32(0))
        return torch.full((rows,), float(p32), dtype=torch.float32, device=device)
    wide = as_rows(value, rows, torch.float64, device, "top_p")
    p = wide.to(torch.float32)
    return torch.where(p.to(torch.float64) > wide, torch.nextafter(p, torch.zeros_like(p)), p)


def host_checkable(*tensors: torch.Tensor | None) -> bool:
    """Whether the values of these tensors can be checked without synchronising with a device (CPU tensors).

    The dispatchers check values (token ids, lengths, settings) only then: on a GPU a check would stall the stream,
    and the kernels mask every load that a bad value could send out of bounds instead.
    """
    return all(t is None or t.device.type == "cpu" for t in tensors)


def inverse_temperature_rows(value: torch.Tensor | float, rows: int, device: torch.device) -> torch.Tensor:
    """:func:`inverse_temperature` of a per-row setting (a number is inverted once, in float32, on the host)."""
    if torch.is_tensor(value):
        return inverse_temperature(as_rows(value, rows, torch.float32, device, "temperature"))
    with np.errstate(over="ignore"):  # a temperature beyond float32 is inf: an inverse of 0, as on tensors
        t = np.float32(value)
    return torch.full((rows,), float(np.float32(1.0) / t) if t > 0 else 0.0, dtype=torch.float32, device=device)


def inverse_temperature(temperature: torch.Tensor) -> torch.Tensor:
    """float32 ``1 / temperature`` (0 where greedy): kernels multiply by it, so both sides round alike."""
    t = temperature.to(torch.float32)
    return torch.where(t > 0, 1.0 / torch.where(t > 0, t, torch.ones_like(t)), torch.zeros_like(t))


@dataclasses.dataclass(frozen=True)
class Warped:
    """A warped batch: its :class:`WarpStats` and ``mass`` ``(n, V)`` float32, ``e`` on kept tokens and 0 elsewhere
    (so the probabilities are ``mass / z``)."""

    stats: WarpStats
    mass: torch.Tensor


def scaled_logits(logits: torch.Tensor, inv_t: torch.Tensor) -> torch.Tensor:
    """float32 ``logits * inv_t`` per row (greedy rows, ``inv_t == 0``, keep temperature 1)."""
    inv = torch.where(inv_t > 0, inv_t, torch.ones_like(inv_t)).to(torch.float32)
    return logits.to(torch.float32) * inv.unsqueeze(1)


def warp_rows(logits: torch.Tensor, inv_t: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
              min_p: torch.Tensor) -> Warped:
    """Warp every row of ``logits`` (``(n, V)``); settings are ``(n,)`` tensors.

    Without top-k and top-p in the batch no key is formed (the common case costs a scaled copy, a max, an exp and a
    sum). Greedy rows (``inv_t == 0``) are warped at temperature 1; callers ignore them.
    """
    n, vocab = logits.shape
    device = logits.device
    s = scaled_logits(logits, inv_t)
    m = s.amax(dim=1) if vocab else torch.zeros(n, device=device)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(s - m.unsqueeze(1))
    thr = torch.zeros(n, dtype=torch.int64, device=device)
    cut = torch.full((n,), vocab, dtype=torch.int64, device=device)
    use_k = (top_k > 0) & (top_k < vocab)
    use_p = top_p < 1.0
    if bool(use_k.any()) or bool(use_p.any()):
        value, cut, thr = _thresholds(s, e, m, use_k, top_k, use_p, top_p)
        ids = torch.arange(vocab, device=device)
        kept = (s > value.unsqueeze(1)) | ((s == value.unsqueeze(1)) & (ids < cut.unsqueeze(1)))
        if bool((min_p > 0).any()):
            kept &= e >= min_p.to(torch.float32).unsqueeze(1)
        mass = torch.where(kept, e, torch.zeros_like(e))
    elif bool((min_p > 0).any()):
        mass = torch.where(e >= min_p.to(torch.float32).unsqueeze(1), e, torch.zeros_like(e))
    else:
        mass = e
    return Warped(WarpStats(m=m, thr=thr, cut=cut, z=row_sums(mass)), mass)


def row_sums(x: torch.Tensor) -> torch.Tensor:
    """The float32 sum of each row of ``x`` (``(n, V)``), to the same bits whatever rows stand beside it.

    A row's probabilities must not depend on its batch: coupled verification draws a position's token from a batch
    of positions, and a plain step draws it from one row, and both must give the same token. torch's CPU sum does
    not ensure that: it splits a long row between threads when the row stands alone but not inside a batch, so the
    two sums can differ in the last bit (in about half of the 49k-token rows tried with 2 threads). On the CPU each
    row is summed on its own by numpy's pairwise summation, which depends on the row's values alone (not on the
    batch, the threads or the memory layout: the rows are made contiguous first). On other devices it is torch's
    sum: the kernels reduce each row in a program of its own, but the torch reference on a GPU (the dispatcher forced
    to it, or triton missing) follows torch's reduction plan, which may depend on the batch's shape. float32 and
    float64 keep their type, other types are summed in float32; the result carries no gradient."""
    if x.device.type != "cpu":
        return x.sum(dim=1)
    x = x.detach()
    rows = np.ascontiguousarray((x if x.dtype in (torch.float32, torch.float64) else x.to(torch.float32)).numpy())
    return torch.from_numpy(np.add.reduce(rows, axis=1))


def temperature_weights_cpu(logits: torch.Tensor, temperature: float) -> np.ndarray | None:
    """``normalised(mass, z)`` of :func:`warp_rows` for one plain temperature (no top-k, top-p or min-p) on the CPU,
    as a float32 numpy array: the same float32 operations in the same order (numpy's multiply, maximum, subtract and
    divide round as torch's do; ``exp`` stays torch's; the row sums are :func:`row_sums`), in place, so the same
    bits in a fraction of the calls. The CPU's plain sampling step runs this once per token, after a forward pass has
    evicted the code of every call from the caches, so the number of calls is its cost. None where
    :func:`warp_rows` must decide: a row without a finite maximum, an empty vocabulary, or a temperature whose
    float32 inverse is 0 or infinite."""
    n, vocab = logits.shape
    with np.errstate(all="ignore"):  # overflow to inf is the float32 arithmetic torch does silently too
        inv = np.float32(1.0) / np.float32(temperature)
        if vocab == 0 or not (np.isfinite(inv) and inv > 0):  # (warp_rows reads an inverse of 0 as greedy)
            return None
        x = logits.numpy() if logits.dtype == torch.float32 and not logits.requires_grad else \
            logits.detach().to(torch.float32).numpy()
        s = np.multiply(x, inv, order="C")  # C-ordered rows: row_sums' pairwise sum of each row, whatever x's layout
        m = s.max(axis=1, keepdims=True)
        if not np.isfinite(m).all():
            return None
        s -= m
        torch.from_numpy(s).exp_()
        z = np.add.reduce(s, axis=1)  # row_sums: z >= 1, the maximum's term is exp(0)
        s *= (np.float32(1.0) / z).reshape(n, 1)
    return s


def _thresholds(s: torch.Tensor, e: torch.Tensor, m: torch.Tensor, use_k: torch.Tensor, top_k: torch.Tensor,
                use_p: torch.Tensor, top_p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k then top-p (module docstring) by ``topk`` and a sort of values instead of radix searches.

    Returns the threshold as a float (``-inf`` keeps all, ``+inf`` none), the cutoff, and the threshold as a key
    (0 for "keep all", as the kernels report it). Keys order like floats, so floats are compared here.
    """
    n, vocab = s.shape
    device = s.device
    neg_inf = torch.full((n,), float("-inf"), device=device)
    value = neg_inf
    cut = torch.full((n,), vocab, dtype=torch.int64, device=device)
    if bool(use_k.any()):
        k = torch.where(use_k, top_k, 1)
        kth = torch.topk(s, int(k.max()), dim=1).values.gather(1, (k - 1).unsqueeze(1)).squeeze(1)
        value = torch.where(use_k, kth, value)
    thr = torch.where(use_k, float_key(value), torch.zeros(n, dtype=torch.int64, device=device))
    if not bool(use_p.any()):
        return value, cut, thr
    survivors = s >= value.unsqueeze(1)
    e_k = torch.where(survivors, e, torch.zeros_like(e))
    target = top_p.to(torch.float32) * row_sums(e_k)
    # only the values in descending order matter (tied tokens carry equal mass): the survivors' top values, as
    # few as reach the target (a prefix of the sorted values and of its running sums is the same whatever its
    # length; the nucleus is usually a small share of the vocabulary)
    width = int(survivors[use_p].sum(dim=1).max())
    candidates = torch.where(survivors, s, neg_inf.unsqueeze(1))
    step = min(width, NUCLEUS_STEP)
    while True:
        if step < vocab:
            ranked = torch.topk(candidates, max(step, 1), dim=1).values
        else:
            ranked = torch.sort(candidates, dim=1, descending=True).values
        mass = torch.cumsum(torch.exp(ranked - m.unsqueeze(1)), dim=1)
        reached = mass >= target.unsqueeze(1)
        if step >= width or bool((reached.any(dim=1) | ~use_p).all()):
            break
        step = min(width, step * 8)
    found = use_p & reached.any(dim=1)
    value_p = ranked.gather(1, torch.argmax(reached.to(torch.int8), dim=1, keepdim=True)).squeeze(1)
    at = s == value_p.unsqueeze(1)
    s_gt = row_sums(torch.where(survivors & (s > value_p.unsqueeze(1)), e, torch.zeros_like(e)))
    e_v = torch.exp(value_p - m)
    rank = torch.cumsum(at.to(torch.int32), dim=1) - 1
    stays = (s_gt.unsqueeze(1) + rank.to(torch.float32) * e_v.unsqueeze(1)) < target.unsqueeze(1)
    first_out = torch.where(at & ~stays, torch.arange(vocab, device=device), vocab).min(dim=1).values
    value = torch.where(found, value_p, value)
    cut = torch.where(found, first_out, cut)
    thr = torch.where(found, float_key(value_p), thr)
    # a row without mass (no finite logit): every value reaches a target of 0; the kernels' search ends at the
    # largest key, 2**32 - 1, which no token has
    empty = use_p & (target <= 0)
    value = torch.where(empty, -neg_inf, value)
    thr = torch.where(empty, torch.full_like(thr, MASK32), thr)
    cut = torch.where(empty, torch.full_like(cut, vocab), cut)
    return value, cut, thr


def warp_stats(logits: torch.Tensor, inv_t: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
               min_p: torch.Tensor) -> WarpStats:
    """The :class:`WarpStats` of every row (what the kernels compute before touching a token's probability)."""
    return warp_rows(logits, inv_t, top_k, top_p, min_p).stats


def kept_mask(key: torch.Tensor, thr: torch.Tensor, cut: torch.Tensor, e: torch.Tensor,
              min_p: torch.Tensor) -> torch.Tensor:
    """The kept tokens of each row from its stats (``key``/``e`` are ``(n, V)``, the rest ``(n,)``)."""
    ids = torch.arange(key.shape[1], device=key.device)
    above = (key > thr.unsqueeze(1)) | ((key == thr.unsqueeze(1)) & (ids < cut.unsqueeze(1)))
    return above & (e >= min_p.to(torch.float32).unsqueeze(1))


def reciprocal(z: torch.Tensor) -> torch.Tensor:
    """``1 / z`` (0 where ``z <= 0``): probabilities are ``e * (1 / z)``, as the kernels compute them."""
    return torch.where(z > 0, 1.0 / torch.where(z > 0, z, torch.ones_like(z)), torch.zeros_like(z))


def normalised(mass: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``mass * (1 / z)`` per row; 0 for a row without mass."""
    return mass * reciprocal(z).unsqueeze(-1)


def warp_probs_reference(logits: torch.Tensor, temperature: torch.Tensor | float = 1.0,
                         top_k: torch.Tensor | int = 0, top_p: torch.Tensor | float = 1.0,
                         min_p: torch.Tensor | float = 0.0) -> torch.Tensor:
    """The warped distribution of every row of ``logits`` (``(n, V)``) as float32 ``(n, V)``.

    Settings are scalars or ``(n,)`` tensors; temperature 0 gives the one-hot of the first argmax.
    """
    n, vocab = logits.shape
    dev = logits.device
    temp = as_rows(temperature, n, torch.float32, dev, "temperature")
    inv_t = inverse_temperature(temp)
    k = as_rows(top_k, n, torch.int64, dev, "top_k")
    p = top_p_rows(top_p, n, dev)
    mp = as_rows(min_p, n, torch.float32, dev, "min_p")
    warped = warp_rows(logits, inv_t, k, p, mp)
    probs = normalised(warped.mass, warped.stats.z)
    greedy = inv_t <= 0
    if bool(greedy.any()) and vocab:
        hot = torch.nn.functional.one_hot(logits.argmax(dim=1), vocab).to(torch.float32)
        probs = torch.where(greedy.unsqueeze(1), hot, probs)
    return probs
