"""Device functions shared by the kernels: the counter-based generator, float keys, warping statistics, the race.

Each function mirrors a torch function of :mod:`anydecode.kernels.rng` or :mod:`anydecode.kernels.warp` operation
for operation, so that kernel and reference round alike; see those modules for what is computed and why.
"""

import triton
import triton.language as tl

NEG_INF = tl.constexpr(float("-inf"))
#: an index larger than any token id (tie-breaking picks the lowest index)
BIG_INDEX = tl.constexpr(2**31 - 1)


# -- counter-based generator (kernels/rng.py) ----------------------------------------------------------------------
@triton.jit
def mix32(x):
    """lowbias32 on uint32 words (multiplication wraps modulo 2**32)."""
    x ^= x >> 16
    x *= 0x7FEB352D
    x ^= x >> 15
    x *= 0x846CA68B
    x ^= x >> 16
    return x


@triton.jit
def stream_key(seed, row, position):
    """The uint32 key of stream (seed, row, position); ``seed`` int64, the others any integer type."""
    seed = seed.to(tl.int64)
    h = mix32((seed & 0xFFFFFFFF).to(tl.uint32) ^ 0x2545F491)
    h = mix32(h ^ ((seed >> 32) & 0xFFFFFFFF).to(tl.uint32))
    h = mix32(h ^ (row.to(tl.int64) & 0xFFFFFFFF).to(tl.uint32))
    return mix32(h ^ (position.to(tl.int64) & 0xFFFFFFFF).to(tl.uint32))


@triton.jit
def lane_bits(key, lane):
    return mix32(key ^ (lane.to(tl.uint32) * 0x61C88647))


@triton.jit
def uniform(word):
    """``[0, 1)``: the top 24 bits times 2**-24."""
    return (word >> 8).to(tl.float32) * 5.9604644775390625e-08


@triton.jit
def exponential(word):
    """``-log`` of the odd multiples of 2**-24 in ``(0, 1)``."""
    u = ((word >> 9) * 2 + 1).to(tl.float32) * 5.9604644775390625e-08
    return -tl.log(u)


@triton.jit
def coin(key, index):
    """The uniform of coin ``index`` of a stream (lane 2**31 + index)."""
    lane = (key * 0 + index) + 0x80000000  # a uint32 whether ``index`` is a tensor or a constant
    return uniform(lane_bits(key, lane))


# -- float keys and warping (kernels/warp.py) ----------------------------------------------------------------------
@triton.jit
def float_key(x):
    """uint32 keys that order like the float32 values."""
    b = (x + 0.0).to(tl.uint32, bitcast=True)  # + 0.0 turns -0.0 into +0.0
    return tl.where((b >> 31) != 0, b ^ 0xFFFFFFFF, b | 0x80000000)


@triton.jit
def load_scaled(row_ptr, offs, n, inv_t):
    """Logits ``offs`` of a row times the inverse temperature, float32; ``-inf`` past the end."""
    x = tl.load(row_ptr + offs, mask=offs < n, other=NEG_INF).to(tl.float32)
    return x * inv_t


@triton.jit
def row_max_sum(row_ptr, n, inv_t, BLOCK: tl.constexpr):
    """``(m, sum exp(s - m))`` of a row in one pass (online rescaling per lane); ``m = 0`` without a finite logit."""
    lane_m = tl.full((BLOCK,), NEG_INF, tl.float32)
    lane_s = tl.zeros((BLOCK,), tl.float32)
    for start in range(0, n, BLOCK):
        s = load_scaled(row_ptr, start + tl.arange(0, BLOCK), n, inv_t)
        new_m = tl.maximum(lane_m, s)
        safe = tl.where(new_m == NEG_INF, 0.0, new_m)
        lane_s = lane_s * tl.exp(lane_m - safe) + tl.exp(s - safe)
        lane_m = new_m
    m = tl.max(lane_m, 0)
    m = tl.where(m == NEG_INF, 0.0, m)
    z = tl.sum(lane_s * tl.exp(lane_m - m), 0)
    return m, z


@triton.jit
def row_argmax(row_ptr, n, BLOCK: tl.constexpr):
    """Index of the first maximum of a row of raw logits (0 for a row of ``-inf``)."""
    lane = tl.arange(0, BLOCK)
    best_v = tl.full((BLOCK,), NEG_INF, tl.float32)
    best_i = lane
    for start in range(0, n, BLOCK):
        offs = start + lane
        x = tl.load(row_ptr + offs, mask=offs < n, other=NEG_INF).to(tl.float32)
        better = x > best_v
        best_i = tl.where(better, offs, best_i)
        best_v = tl.where(better, x, best_v)
    top = tl.max(best_v, 0)
    return tl.min(tl.where(best_v == top, best_i, BIG_INDEX), 0)


@triton.jit
def threshold_key(row_ptr, n, inv_t, m, floor, target, BY_MASS: tl.constexpr, BLOCK: tl.constexpr):
    """Largest uint32 ``t`` with ``F(t) >= target``, ``F(t) = sum of w over tokens with key >= max(t, floor)``
    (``w = e`` by mass, 1 by count); 0 when even ``F(0)`` falls short. Radix search, 4 bits per pass over the row:
    each pass tests 16 candidate digits at once on a ``(BLOCK, 16)`` tile (callers pass a smaller block here)."""
    digits = tl.arange(0, 16).to(tl.uint32)
    prefix = floor * 0
    for step in tl.static_range(8):
        shift = 28 - 4 * step
        cands = prefix | (digits << shift)
        acc = tl.zeros((16,), tl.float32)
        for start in range(0, n, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            s = load_scaled(row_ptr, offs, n, inv_t)
            key = float_key(s)
            if BY_MASS:
                w = tl.exp(s - m)
            else:
                w = tl.full((BLOCK,), 1.0, tl.float32)
            w = tl.where((offs < n) & (key >= floor), w, 0.0)
            ge = key[:, None] >= cands[None, :]
            acc += tl.sum(tl.where(ge, w[:, None], 0.0), 0)
        best = tl.max(tl.where(acc >= target, digits, 0), 0)
        prefix = prefix | (best << shift)
    return prefix


@triton.jit
def tie_stats(row_ptr, n, inv_t, m, floor, thr, BLOCK: tl.constexpr):
    """Mass strictly above ``thr`` (tokens ``>= floor``), the size of the tie group at ``thr`` and its ``e``."""
    s_gt = tl.zeros((BLOCK,), tl.float32)
    size = tl.zeros((BLOCK,), tl.int32)
    e_v = tl.zeros((BLOCK,), tl.float32)
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        s = load_scaled(row_ptr, offs, n, inv_t)
        key = float_key(s)
        e = tl.exp(s - m)
        valid = offs < n
        s_gt += tl.where(valid & (key > thr) & (key >= floor), e, 0.0)
        at = valid & (key == thr)
        size += at.to(tl.int32)
        e_v = tl.maximum(e_v, tl.where(at, e, 0.0))
    return tl.sum(s_gt, 0), tl.sum(size, 0), tl.max(e_v, 0)


@triton.jit
def staying_count(s_gt, e_v, target, size):
    """How many tie ranks ``r < size`` satisfy ``s_gt + r * e_v < target`` (a prefix of the ranks): bisection."""
    lo = size * 0
    hi = size
    for _ in range(32):
        mid = (lo + hi) // 2
        total = s_gt + mid.to(tl.float32) * e_v
        go = lo < hi
        lo = tl.where(go & (total < target), mid + 1, lo)
        hi = tl.where(go & (total >= target), mid, hi)
    return lo


@triton.jit
def nth_index(row_ptr, n, inv_t, thr, rank, BLOCK: tl.constexpr):
    """Token id of the tie-group member of rank ``rank`` (0-based, in token order)."""
    carry = rank * 0
    found = n + rank * 0
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        at = ((offs < n) & (float_key(load_scaled(row_ptr, offs, n, inv_t)) == thr)).to(tl.int32)
        r = carry + tl.cumsum(at, 0) - 1
        found = tl.minimum(found, tl.min(tl.where((at != 0) & (r == rank), offs, n), 0))
        carry += tl.sum(at, 0)
    return found


@triton.jit
def kept(key, offs, e, thr, cut, min_p):
    return ((key > thr) | ((key == thr) & (offs < cut))) & (e >= min_p)


@triton.jit
def kept_sum(row_ptr, n, inv_t, m, thr, cut, min_p, BLOCK: tl.constexpr):
    acc = tl.zeros((BLOCK,), tl.float32)
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        s = load_scaled(row_ptr, offs, n, inv_t)
        e = tl.exp(s - m)
        acc += tl.where((offs < n) & kept(float_key(s), offs, e, thr, cut, min_p), e, 0.0)
    return tl.sum(acc, 0)


@triton.jit
def warp_row_stats(row_ptr, n, inv_t, top_k, top_p, min_p, BLOCK: tl.constexpr, RBLOCK: tl.constexpr):
    """``(m, thr, cut, z)`` of one row (see kernels/warp.py): one pass without truncation, about 10 with top-k,
    about 20 with top-p (the threshold searches re-read the row, from L2 on a GPU)."""
    m, z = row_max_sum(row_ptr, n, inv_t, BLOCK)
    thr = (n * 0).to(tl.uint32)
    cut = n
    use_k = (top_k > 0) & (top_k < n)
    use_p = top_p < 1.0
    if use_k:
        thr = threshold_key(row_ptr, n, inv_t, m, thr, top_k.to(tl.float32), False, RBLOCK)
    if use_p:
        floor = thr
        z_k = kept_sum(row_ptr, n, inv_t, m, floor, n, 0.0, BLOCK)
        target = top_p * z_k
        thr_p = threshold_key(row_ptr, n, inv_t, m, floor, target, True, RBLOCK)
        if thr_p != 0:
            s_gt, size, e_v = tie_stats(row_ptr, n, inv_t, m, floor, thr_p, BLOCK)
            stay = staying_count(s_gt, e_v, target, size)
            if stay < size:
                cut = nth_index(row_ptr, n, inv_t, thr_p, stay, BLOCK)
            thr = thr_p
    if use_k | use_p | (min_p > 0.0):
        z = kept_sum(row_ptr, n, inv_t, m, thr, cut, min_p, BLOCK)
    return m, thr, cut, z


@triton.jit
def reciprocal(z):
    """``1 / z`` rounded to nearest (0 for ``z <= 0``): probabilities are ``e * (1 / z)`` on both sides."""
    ok = z > 0.0
    return tl.where(ok, tl.math.div_rn(z * 0.0 + 1.0, tl.where(ok, z, 1.0)), 0.0)


@triton.jit
def warped_block(row_ptr, offs, n, inv_t, m, thr, cut, inv_z, min_p):
    """Probabilities ``e * (1 / z)`` of a block of tokens (0 where not kept or past the end)."""
    s = load_scaled(row_ptr, offs, n, inv_t)
    e = tl.exp(s - m)
    if (thr == 0) & (min_p <= 0.0):  # nothing truncated: skip the keys
        ok = offs < n
    else:
        ok = (offs < n) & kept(float_key(s), offs, e, thr, cut, min_p)
    return tl.where(ok, e * inv_z, 0.0)


# -- exponential race (kernels/rng.py race_argmax) -----------------------------------------------------------------
@triton.jit
def race_update(w, draws, offs, best_v, best_i):
    """Fold a block of weights into per-lane race winners: values ``w / E`` (``draws`` = the block's exponentials),
    -1 where ``w <= 0``; a lane keeps its earlier index on equal values. The division is the GPU's fast one (within
    2 ulp): it can change a winner only between values that close, which happens about once in 10**7 draws."""
    r = tl.where(w > 0.0, w / draws, -1.0)
    better = r > best_v
    return tl.where(better, r, best_v), tl.where(better, offs, best_i)


@triton.jit
def race_draws(key, offs):
    """Standard exponentials of the lanes ``offs`` of stream ``key``."""
    return exponential(lane_bits(key, offs))


@triton.jit
def race_result(best_v, best_i):
    """The winning index over the lanes (lowest index among equal values), -1 without positive weight."""
    top = tl.max(best_v, 0)
    idx = tl.min(tl.where(best_v == top, best_i, BIG_INDEX), 0)
    return tl.where(top > 0.0, idx, -1)
