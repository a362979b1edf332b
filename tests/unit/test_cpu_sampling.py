"""The CPU's plain sampling step (a temperature, nothing else): its few-call path against the written-out definition.

``sample_tokens`` on the CPU takes a short path for plain temperature sampling (numpy for the arithmetic that
rounds alike in both libraries and for the row sums, torch for ``exp`` and ``log``): it must give the same bits as the
general warp and the int64 definition of the generator, not merely the same distribution, because coupled
verification relies on a plain step and a verified position drawing the same token.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from anydecode import kernels
from anydecode.algorithms.contracts.session import token_rows
from anydecode.kernels import rng
from anydecode.kernels.residual import residual_step
from anydecode.kernels.warp import (as_rows, inverse_temperature_rows, normalised, temperature_weights_cpu,
                                    top_p_rows, warp_rows)

TEMPERATURES = [0.3, 0.7, 1.0, 1.9]


def logit_cases() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    cases = [torch.randn(n, vocab, generator=g) * scale
             for n, vocab, scale in [(1, 49152, 4.0), (3, 49152, 9.0), (2, 5000, 1.0), (4, 97, 20.0), (1, 2, 0.1)]]
    tied = torch.randint(-3, 4, (2, 3000), generator=g).float()
    holes = torch.randn(2, 4000, generator=g) * 3
    holes[torch.rand(holes.shape, generator=g) < 0.3] = float("-inf")
    return cases + [tied, holes, (torch.randn(2, 4096, generator=g) * 5).to(torch.bfloat16),
                    (torch.randn(1, 4096, generator=g) * 5).half()]


def warped_weights(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The general path: ``warp_rows`` with no top-k, top-p or min-p, then ``normalised``."""
    n, dev = logits.shape[0], logits.device
    w = warp_rows(logits, inverse_temperature_rows(temperature, n, dev), as_rows(0, n, torch.int64, dev, "top_k"),
                  top_p_rows(1.0, n, dev), as_rows(0.0, n, torch.float32, dev, "min_p"))
    return normalised(w.mass, w.stats.z)


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_plain_temperature_weights_are_the_warps_bit_for_bit(temperature):
    for logits in logit_cases():
        fast = temperature_weights_cpu(logits, temperature)
        assert fast is not None
        assert torch.equal(torch.from_numpy(fast), warped_weights(logits, temperature))


def test_a_row_without_a_finite_logit_leaves_the_short_path():
    logits = torch.tensor([[0.0, 1.0, 2.0], [float("-inf")] * 3])
    assert temperature_weights_cpu(logits, 0.7) is None
    token = kernels.sample_tokens(logits, seeds=1, offsets=torch.tensor([4, 4]), temperature=0.7)
    assert token[1] == -1 and 0 <= token[0] < 3


@pytest.mark.parametrize("temperature", [float("inf"), 1e39, 1e-46, 1e-30])
def test_extreme_temperatures_draw_the_general_paths_token(temperature):
    """An inverse temperature that rounds to 0 (the warp's greedy marker) or overflows leaves the short path."""
    logits = logit_cases()[2]
    with np.errstate(all="raise"):
        fast = kernels.sample_tokens(logits, seeds=3, offsets=torch.tensor([5, 6]), temperature=temperature)
    general = rng.race_argmax(warped_weights(logits, temperature), rng.stream_key(3, torch.arange(2),
                                                                                 torch.tensor([5, 6])))
    assert torch.equal(fast, general)


def test_an_empty_vocabulary_and_one_key_for_several_rows():
    assert kernels.sample_tokens(torch.zeros(2, 0), seeds=1, offsets=0, temperature=0.7).tolist() == [-1, -1]
    logits = logit_cases()[1]
    one = kernels.sample_tokens(logits, seeds=4, offsets=9, temperature=0.7, rows=torch.tensor([0]))
    assert torch.equal(one, kernels.sample_tokens(logits, seeds=4, offsets=9, temperature=torch.tensor(0.7),
                                                  rows=torch.tensor([0])))


def defined_race(weights: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """The race as the module docstring defines it, on torch's int64 words (no numpy): first index of the largest
    ``w / E``, -1 where that is not positive."""
    lanes = torch.arange(weights.shape[1])
    word = rng.mix32(keys.unsqueeze(1) ^ rng._mul32(lanes, rng.WEYL).unsqueeze(0))
    e = -torch.log(((word >> 9) * 2 + 1).to(torch.float32) * (2.0 ** -24))
    values = weights.to(torch.float32) / e
    best = values.max(dim=1)
    first = (values == best.values.unsqueeze(1)).to(torch.int8).argmax(dim=1)
    return torch.where(best.values > 0, first, torch.full_like(first, -1))


def test_the_dense_race_draws_the_defined_winner():
    g = torch.Generator().manual_seed(5)
    for vocab in (2, 777, 49152):
        weights = torch.softmax(torch.randn(4, vocab, generator=g) * 3, dim=1)
        weights[1, : vocab // 2] = 0.0
        weights[3] = 0.0  # no weight: -1
        for position in range(25):
            keys = rng.stream_key(11, torch.arange(4), position)
            got = torch.from_numpy(rng.race_dense_np(weights.numpy(), rng._u32(keys)))
            assert torch.equal(got, defined_race(weights, keys))
            assert got[3] == -1



def test_the_dense_race_rounds_as_the_definition_where_every_lane_nearly_ties():
    """Weights proportional to the lanes' own exponentials put every ``w / E`` within an ulp or two of the others:
    the winner is decided by the last bits of each uniform, logarithm and quotient, so any other rounding (a
    uniform off by half a grid step, a division by ``-E`` done otherwise) picks another lane."""
    for vocab in (777, 49152):
        lanes = torch.arange(vocab)
        for position in range(12):
            keys = rng.stream_key(3, torch.arange(2), position)
            e = torch.stack([rng.exponential(rng.lane_bits(k, lanes)) for k in keys])
            weights = e * torch.tensor([[0.37], [1e-3]])
            got = torch.from_numpy(rng.race_dense_np(weights.numpy(), rng._u32(keys)))
            assert torch.equal(got, defined_race(weights, keys))

@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_plain_sampling_on_the_cpu_draws_the_general_paths_token(temperature):
    """A tensor temperature takes the general path (warp, normalise, race over every lane)."""
    for logits in logit_cases():
        n = logits.shape[0]
        for position in range(0, 60, 7):
            kw = dict(seeds=2**40 + 9, offsets=torch.full((n,), position), rows=torch.arange(n))
            fast = kernels.sample_tokens(logits, temperature=temperature, **kw)
            general = kernels.sample_tokens(logits, temperature=torch.tensor(temperature), **kw)
            assert torch.equal(fast, general)


def test_one_row_given_as_ints_draws_what_tensors_draw():
    """The loop's plain step passes one row's stream as ints: the same stream as index tensors, on both paths."""
    for logits in logit_cases():
        for row, position in [(0, 0), (2, 17), (5, 2**33 + 3)]:
            one = logits[:1]
            as_ints = dict(seeds=2**40 + 9, offsets=position, rows=row)
            as_tensors = dict(seeds=2**40 + 9, offsets=torch.tensor([position]), rows=torch.tensor([row]))
            for temperature in (0.7, torch.tensor(0.7)):
                want = kernels.sample_tokens(one, temperature=temperature, **as_tensors)
                assert torch.equal(kernels.sample_tokens(one, temperature=temperature, **as_ints), want)


def defined_key(seed, row, position) -> torch.Tensor:
    h = rng.mix32(rng._word(seed) ^ rng.SALT)
    h = rng.mix32(h ^ rng._word(seed, 32))
    h = rng.mix32(h ^ rng._word(row))
    return rng.mix32(h ^ rng._word(position))


@pytest.mark.parametrize("seed,row,position", [
    (0, 0, 0), (2**40 + 7, torch.arange(3), torch.tensor([5, 6, 7])), (-5, torch.tensor(2), 2**33 + 1),
    (torch.tensor([1, 2**63 - 1]), 3, torch.tensor([[1], [2]])), (7, torch.arange(8), 9),
    (-5, 3, 2**33 + 1), (2**63 - 1, 2**32 + 5, 11)])
def test_few_stream_keys_are_the_int64_definition(seed, row, position):
    want = defined_key(torch.as_tensor(seed), torch.as_tensor(row), torch.as_tensor(position))
    assert torch.equal(rng.stream_key(seed, row, position), want)
    assert np.array_equal(rng.stream_words(seed, row, position).astype(np.int64), want.numpy())
    as_lists = [v.tolist() if torch.is_tensor(v) else v for v in (seed, row, position)]
    assert torch.equal(rng.stream_key(*as_lists), want)  # lists and numpy arrays as before


def test_a_seed_beyond_64_bits_is_refused_as_on_every_device():
    with pytest.raises(OverflowError, match="64-bit"):
        rng.stream_key(2**64 + 5, 0, 0)


def test_token_rows_take_lists_and_tensors_and_name_a_bad_shape():
    assert token_rows([[1, 2], [3, 4]], 2) == [[1, 2], [3, 4]]
    assert token_rows([5, 6, 7], 1) == [[5, 6, 7]]
    assert token_rows(torch.tensor([[1, 2]]), 1) == [[1, 2]]
    assert token_rows([torch.tensor(5), np.int64(6)], 1) == [[5, 6]]
    for bad, rows in (([[1, 2], [3]], 2), ([[1]], 2), ([[]], 1)):
        with pytest.raises(ValueError, match=r"expected a token block of shape \(\d+, k>=1\)"):
            token_rows(bad, rows)


def test_a_rows_probabilities_do_not_depend_on_the_rows_beside_it():
    """A plain step draws a position's token from one row, coupled verification from a batch of positions: the
    row's weights must be the same bits in both. torch's CPU sum of a long row alone is split between threads and
    differs in the last bit from the same row's sum inside a batch (about half the rows here, with 2 threads)."""
    g = torch.Generator().manual_seed(8)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for vocab in (49152, 100003):
            batch = torch.randn(12, vocab, generator=g) * 4
            for temperature in (0.7, 1.3):
                together = temperature_weights_cpu(batch[:4], temperature)
                general = warped_weights(batch, temperature)
                for r in range(4):
                    alone = temperature_weights_cpu(batch[r: r + 1], temperature)
                    assert np.array_equal(alone, together[r: r + 1])
                    assert torch.equal(warped_weights(batch[r: r + 1], temperature), general[r: r + 1])
                    assert torch.equal(torch.from_numpy(alone), general[r: r + 1])
            top_p = warp_rows(batch, inverse_temperature_rows(0.7, 12, batch.device), as_rows(0, 12, torch.int64,
                              batch.device, "top_k"), top_p_rows(0.9, 12, batch.device),
                              as_rows(0.0, 12, torch.float32, batch.device, "min_p"))
            for r in range(3):
                one = warp_rows(batch[r: r + 1], inverse_temperature_rows(0.7, 1, batch.device),
                                as_rows(0, 1, torch.int64, batch.device, "top_k"), top_p_rows(0.9, 1, batch.device),
                                as_rows(0.0, 1, torch.float32, batch.device, "min_p"))
                assert torch.equal(one.stats.z, top_p.stats.z[r: r + 1])
                assert torch.equal(one.stats.thr, top_p.stats.thr[r: r + 1])
            # a column-major batch (a transposed product): the same bits as its rows alone and contiguous
            columns = batch[:3].t().contiguous().t()
            weights = temperature_weights_cpu(columns, 0.7)
            assert np.array_equal(weights, temperature_weights_cpu(batch[:3], 0.7))
            assert torch.equal(torch.from_numpy(weights), warped_weights(columns, 0.7))
            # the residual a tree node samples after a rejection
            p = torch.softmax(batch[:4], dim=1)
            q = torch.softmax(batch[4:8], dim=1)
            together = residual_step(p, q)
            for r in range(4):
                assert torch.equal(residual_step(p[r: r + 1], q[r: r + 1]), together[r: r + 1])
    finally:
        torch.set_num_threads(threads)
