"""A kernel that writes the generator's outputs, so tests and the GPU script can compare them with kernels/rng.py."""

import torch
import triton
import triton.language as tl

from .common import coin, exponential, lane_bits, stream_key, uniform


@triton.jit
def _bits_kernel(seed_ptr, row_ptr, pos_ptr, lane_ptr, bits_ptr, uniform_ptr, exp_ptr, coin_ptr, n,
                 BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    key = stream_key(tl.load(seed_ptr + offs, mask=ok, other=0), tl.load(row_ptr + offs, mask=ok, other=0),
                     tl.load(pos_ptr + offs, mask=ok, other=0))
    word = lane_bits(key, tl.load(lane_ptr + offs, mask=ok, other=0))
    tl.store(bits_ptr + offs, word.to(tl.int64), mask=ok)
    tl.store(uniform_ptr + offs, uniform(word), mask=ok)
    tl.store(exp_ptr + offs, exponential(word), mask=ok)
    tl.store(coin_ptr + offs, coin(key, tl.load(lane_ptr + offs, mask=ok, other=0)), mask=ok)


def launch(seeds: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor, lanes: torch.Tensor,
           block: int) -> tuple[torch.Tensor, ...]:
    """For int64 tensors of one shape ``(n,)``: lane bits (int64), uniform, exponential, and coin ``lane`` of the
    stream (float32)."""
    n = seeds.numel()
    bits = torch.empty(n, dtype=torch.int64, device=seeds.device)
    uni = torch.empty(n, dtype=torch.float32, device=seeds.device)
    exp = torch.empty(n, dtype=torch.float32, device=seeds.device)
    coins = torch.empty(n, dtype=torch.float32, device=seeds.device)
    if n:
        _bits_kernel[(triton.cdiv(n, block),)](seeds, rows, positions, lanes, bits, uni, exp, coins, n, BLOCK=block)
    return bits, uni, exp, coins
