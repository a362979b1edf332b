"""A counter-based random generator that torch and Triton evaluate to the same bits.

Why: a kernel and its torch reference must draw the *same* random numbers, so that their integer outputs (accepted
counts, sampled tokens) can be compared exactly, and a sampled token must not depend on how a kernel splits the
vocabulary over programs. A stateful generator (``torch.Generator``, Philox offsets) gives neither. Here every
random number is a pure function of a key:

    bits(seed, row, position, lane) = mix32(stream_key(seed, row, position) ^ (lane * WEYL mod 2**32))
    stream_key(seed, row, position) = mix32(mix32(mix32(mix32(seed_lo ^ SALT) ^ seed_hi) ^ row) ^ position)

where ``mix32`` is Chris Wellons' "lowbias32" integer hash (xorshift-multiply, two rounds; a bijection of the 32-bit
words with low avalanche bias), ``seed_lo``/``seed_hi`` are the two 32-bit halves of a 64-bit seed, ``row`` and
``position`` are taken modulo 2**32, and ``WEYL = 0x61C88647`` (the golden-ratio increment) spreads consecutive lanes
over the 32-bit space before hashing.

* **Lanes.** Token ``i`` of a vocabulary uses lane ``i`` (so ``i < 2**31``); coin flips use lanes from
  :data:`COIN_LANE` = 2**31 upwards, so a coin and a token draw at the same key never share bits.
* **Uniforms.** :func:`uniform` = ``(bits >> 8) * 2**-24``: 24 bits, in ``[0, 1)``, exact in float32; a coin with
  probability ``a`` is ``uniform < a`` (certain for ``a >= 1``, impossible for ``a <= 0``).
  :func:`open_uniform` = ``(2 * (bits >> 9) + 1) * 2**-24``: the odd multiples of 2**-24, in ``(0, 1)`` strictly and
  symmetric about 1/2, so ``-log(open_uniform)`` is a finite, positive standard-exponential draw (the 24-bit grid
  of :func:`uniform` would reach 0, and its midpoints do not fit float32 near 1).
* **Arithmetic.** torch has no wrapping uint32 multiply, so the torch side holds each 32-bit word in an int64 and
  multiplies by constants below 2**31 (the product stays below 2**63). A constant ``c >= 2**31`` is applied as
  ``x * (c - 2**31)`` with bit 31 flipped when ``x`` is odd: ``x * 2**31`` modulo 2**32 is exactly that bit. The
  Triton side (:mod:`.jit.common`) multiplies uint32 words, which wrap modulo 2**32 natively; the two agree bit for
  bit (tested in ``tests/unit/test_kernels.py``).

Sampling with these numbers is by the exponential race (:func:`race_argmax`): for weights ``w_i >= 0`` the index
``argmax_i w_i / E_i`` with independent standard exponentials ``E_i`` is distributed as ``w / sum(w)``, because
``E_i / w_i`` is exponential with rate ``w_i`` and the smallest of independent exponentials is the ``i``-th with
probability ``w_i / sum(w)``. Nothing is normalised or summed, so a kernel can race block by block and keep the best,
and kernel and reference agree on the winner (ties, of probability about 2**-23 per pair, go to the lowest index).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

MASK32 = 0xFFFFFFFF
#: lowbias32's multipliers (Wellons, "Prospecting for hash functions", 2018)
MIX_1 = 0x7FEB352D
MIX_2 = 0x846CA68B
#: 2**32 / golden ratio, rounded to an odd number: consecutive lanes land far apart before hashing
WEYL = 0x61C88647
#: xor-ed into the low seed word first, so that seed 0, row 0, position 0 is not hash(0) = 0
SALT = 0x2545F491
#: the first lane of coin flips (lanes below it are token ids)
COIN_LANE = 1 << 31
_HIGH_BIT = 1 << 31


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``x * c`` modulo 2**32 for int64 ``x`` in ``[0, 2**32)`` and a constant ``c`` in ``[0, 2**32)``."""
    if c < _HIGH_BIT:
        return (x * c) & MASK32
    return ((x * (c - _HIGH_BIT)) ^ ((x & 1) << 31)) & MASK32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on int64 tensors holding 32-bit words: a bijection of ``[0, 2**32)``."""
    x = x ^ (x >> 16)
    x = _mul32(x, MIX_1)
    x = x ^ (x >> 15)
    x = _mul32(x, MIX_2)
    return x ^ (x >> 16)


def _word(x: torch.Tensor | int, shift: int = 0) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.int64)
    return (t >> shift) & MASK32 if shift else t & MASK32


def stream_key(seed: torch.Tensor | int, row: torch.Tensor | int, position: torch.Tensor | int) -> torch.Tensor:
    """The 32-bit key of one (seed, row, position) stream, as int64; arguments broadcast."""
    seed, row, position = (_int64(v) if isinstance(v, int) else v if torch.is_tensor(v) else
                           torch.as_tensor(v, dtype=torch.int64) for v in (seed, row, position))  # lists, numpy
    if _on_cpu(seed, row, position):
        if all(not torch.is_tensor(v) or v.numel() <= 8 for v in (seed, row, position)):
            return torch.from_numpy(stream_words(seed, row, position).astype(np.int64))
        with np.errstate(over="ignore"):
            h = _mix32_np(_u32(seed) ^ np.uint32(SALT))
            h = _mix32_np(h ^ _u32(seed, 32))
            h = _mix32_np(h ^ _u32(row))
            return torch.from_numpy(_mix32_np(h ^ _u32(position)).astype(np.int64))
    h = mix32(_word(seed) ^ SALT)
    h = mix32(h ^ _word(seed, 32))
    h = mix32(h ^ _word(row))
    return mix32(h ^ _word(position))


def stream_words(seed: torch.Tensor | int, row: torch.Tensor | int, position: torch.Tensor | int) -> np.ndarray:
    """:func:`stream_key` of a few CPU streams (a step's rows) as uint32 words, on Python ints: after a forward pass
    has evicted their code from the caches, every tensor call costs tens of microseconds, so few are made."""
    if type(seed) is int and type(row) is int and type(position) is int:  # one stream (a plain step's one row)
        return np.array(_key_int(_int64(seed), _int64(row), _int64(position)), dtype=np.uint32)
    values = [np.array(v.tolist() if torch.is_tensor(v) else _int64(v), dtype=object) for v in (seed, row, position)]
    seeds, rows, positions = np.broadcast_arrays(*values)
    keys = [_key_int(int(a), int(b), int(c)) for a, b, c in zip(seeds.flat, rows.flat, positions.flat)]
    return np.array(keys, dtype=np.uint32).reshape(seeds.shape)


def _int64(value: int) -> int:
    """An int that torch would hold as int64 (the tensor path refuses larger ones too)."""
    value = int(value)
    if not -(1 << 63) <= value < (1 << 63):
        raise OverflowError(f"{value} does not fit in a signed 64-bit integer (seeds, rows and positions must)")
    return value


def _mix32_int(x: int) -> int:
    """:func:`mix32` of one Python int word."""
    x ^= x >> 16
    x = (x * MIX_1) & MASK32
    x ^= x >> 15
    x = (x * MIX_2) & MASK32
    return x ^ (x >> 16)


def _key_int(seed: int, row: int, position: int) -> int:
    """:func:`stream_key` of one stream, on Python ints."""
    h = _mix32_int((seed & MASK32) ^ SALT)
    h = _mix32_int(h ^ ((seed >> 32) & MASK32))
    h = _mix32_int(h ^ (row & MASK32))
    return _mix32_int(h ^ (position & MASK32))


def lane_bits(key: torch.Tensor, lane: torch.Tensor | int) -> torch.Tensor:
    """32 random bits (int64) for each ``lane`` of the stream ``key``; arguments broadcast."""
    if _on_cpu(key, lane):
        with np.errstate(over="ignore"):  # wrapping modulo 2**32 is the point
            return torch.from_numpy(_lane_bits_np(_u32(key), _u32(lane) * np.uint32(WEYL)).astype(np.int64))
    return mix32(key ^ _mul32(_word(lane), WEYL))


# -- the same words on the CPU with numpy's uint32, which wraps modulo 2**32 natively (a few times faster than the
# -- int64 emulation above, which is kept for other devices and as the written-out definition)
def _on_cpu(*values: torch.Tensor | int) -> bool:
    return all(not torch.is_tensor(v) or v.device.type == "cpu" for v in values)


def _u32(x: torch.Tensor | int, shift: int = 0) -> np.ndarray:
    """uint32 words of int64 tensor values or an int (bits ``shift`` and up, modulo 2**32)."""
    if torch.is_tensor(x):
        return ((x.to(torch.int64).numpy() >> shift) & MASK32).astype(np.uint32)
    return np.asarray((int(x) >> shift) & MASK32, dtype=np.uint32)


def _lane_bits_np(key: np.ndarray, weyl_lane: np.ndarray) -> np.ndarray:
    """``mix32(key ^ weyl_lane)`` on uint32 arrays (``weyl_lane = lane * WEYL mod 2**32``), broadcasting."""
    return _mix32_np(np.bitwise_xor(key, weyl_lane))


def _mix32_np(x: np.ndarray) -> np.ndarray:
    """:func:`mix32` on a uint32 array that the caller made for it (it is overwritten); same shape."""
    x = np.asarray(x, dtype=np.uint32)  # numpy scalars (from 0-d arithmetic) become arrays of ours
    flat = x.reshape(-1)  # a view, also of a 0-d array, whose scalar arithmetic would warn about wrapping
    flat ^= flat >> np.uint32(16)
    flat *= np.uint32(MIX_1)
    flat ^= flat >> np.uint32(15)
    flat *= np.uint32(MIX_2)
    flat ^= flat >> np.uint32(16)
    return x


@functools.lru_cache(maxsize=8)
def _weyl_lanes(vocab: int) -> np.ndarray:
    """``i * WEYL mod 2**32`` for the token lanes ``0..vocab-1`` (read-only, shared)."""
    lanes = np.arange(vocab, dtype=np.uint32) * np.uint32(WEYL)
    lanes.setflags(write=False)
    return lanes


def _race_dense_cpu(weights: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """:func:`race_argmax` over every lane of every row at once (CPU): :func:`race_dense_np`."""
    return torch.from_numpy(race_dense_np(weights.to(torch.float32).numpy(), _u32(keys)))


def race_dense_np(weights: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """:func:`race_argmax` of float32 ``weights`` ``(n, V)`` (``w >= 0``) on the uint32 stream ``keys`` ``(n,)``,
    every lane at once, in numpy (int64 ``(n,)``): no index lists, one argmin, and few calls. The words stay uint32
    until they are uniforms (the int64 emulation would cost three times as much here); the logarithm is torch's.

    Same numbers, one call fewer than a division by :func:`exponential`: ``w / E = -(w / -E)`` exactly (division
    rounds the same either side of 0), so the race's first maximum is the first minimum of ``w / -E``
    (:func:`negated_exponential`), and a row without weight has no value below 0."""
    n, vocab = weights.shape
    with np.errstate(over="ignore"):
        words = _lane_bits_np(keys.reshape(-1, 1), _weyl_lanes(vocab)[None, :])  # one key may serve every row
    logs = negated_exponential(words)
    values = np.divide(weights, logs, out=logs) if logs.shape == weights.shape else weights / logs
    first = np.argmin(values, axis=1)
    best = values[np.arange(n), first]
    return np.where(best < 0, first, -1).astype(np.int64)


def negated_exponential(words: np.ndarray) -> np.ndarray:
    """``-exponential(words)`` as float32 numpy, from uint32 words that it consumes: ``log(open_uniform)``, in three
    numpy calls and torch's logarithm. ``(bits >> 8) | 1`` is ``2 * (bits >> 9) + 1``, below 2**24, so one scaling
    by 2**-24 gives :func:`open_uniform` exactly, and negating a logarithm is exact."""
    words >>= np.uint32(8)
    words |= np.uint32(1)
    logs = np.multiply(words, np.float32(2.0 ** -24), dtype=np.float32)
    torch.from_numpy(logs).log_()
    return logs


def bits(seed: torch.Tensor | int, row: torch.Tensor | int, position: torch.Tensor | int,
         lane: torch.Tensor | int) -> torch.Tensor:
    """``lane_bits(stream_key(seed, row, position), lane)``."""
    return lane_bits(stream_key(seed, row, position), lane)


def uniform(word: torch.Tensor) -> torch.Tensor:
    """float32 uniforms in ``[0, 1)`` from 32-bit words: the top 24 bits times 2**-24."""
    return (word >> 8).to(torch.float32) * (2.0 ** -24)


def open_uniform(word: torch.Tensor) -> torch.Tensor:
    """float32 uniforms in ``(0, 1)``: the odd multiples of 2**-24, from the top 23 bits (the CPU's dense race forms
    the same numbers from numpy words in :func:`negated_exponential`)."""
    return ((word >> 9) * 2 + 1).to(torch.float32) * (2.0 ** -24)


def exponential(word: torch.Tensor) -> torch.Tensor:
    """Standard-exponential float32 draws ``-log(open_uniform(word))``, finite and positive."""
    return open_uniform(word).log_().neg_()


def coin_uniform(key: torch.Tensor, index: torch.Tensor | int = 0) -> torch.Tensor:
    """The uniform of coin ``index`` of stream ``key`` (lane ``COIN_LANE + index``)."""
    return uniform(lane_bits(key, torch.as_tensor(index, dtype=torch.int64) + COIN_LANE))


def race_argmax(weights: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Sample one index per row of ``weights`` (``(n, V)``, non-negative, any scale) by the exponential race.

    ``keys`` is ``(n,)``: each row's stream key; lane ``i`` is token ``i``. Returns int64 ``(n,)``: the index of
    ``max_i w_i / E_i`` (lowest index among equal values), or -1 for a row without positive weight. Only lanes with
    positive weight are hashed (after top-k or in a residual most lanes are 0), which is what makes this the CPU
    path's fast sampler; on the CPU, rows that are mostly positive are raced densely (same numbers).
    """
    n, vocab = weights.shape
    # mostly positive on the CPU: hash every lane, skip the index lists
    if n and vocab and weights.device.type == "cpu" and keys.device.type == "cpu" and \
            4 * int(torch.count_nonzero(weights)) >= n * vocab:
        return _race_dense_cpu(weights, keys)
    rows, lanes = (weights > 0).nonzero(as_tuple=True)
    token = torch.full((n,), -1, dtype=torch.int64, device=weights.device)
    if rows.numel() == 0:
        return token
    values = race_values(weights[rows, lanes].to(torch.float32), keys[rows], lanes)
    best = torch.full((n,), -1.0, device=weights.device).scatter_reduce(0, rows, values, "amax")
    hit = values == best[rows]
    first = torch.full((n,), vocab, dtype=torch.int64, device=weights.device)
    first = first.scatter_reduce(0, rows[hit], lanes[hit], "amin")
    return torch.where(best > 0, first, token)


def race_values(weights: torch.Tensor, keys: torch.Tensor, lanes: torch.Tensor) -> torch.Tensor:
    """``w / E`` where ``w > 0`` and -1 elsewhere (float32): the values the exponential race compares."""
    e = exponential(lane_bits(keys, lanes))
    return torch.where(weights > 0, weights / e, torch.full_like(weights, -1.0))
