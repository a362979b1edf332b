"""Sampling warpers, the seeded sampler and the shared loop, checked exactly against the float64 reference."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from anydecode import ConfigError, SamplingConfig
from anydecode.algorithms.contracts.decoder import DecodeContext
from anydecode.algorithms.loop import transform_decoder
from anydecode.algorithms.contracts.config import DecoderConfig
from anydecode.algorithms.contracts.transform import LogitsTransform
from anydecode.algorithms.sampling import categorical, make_generator, warped_probs
from anydecode.algorithms.sampling.decoders import GREEDY, SAMPLE
from anydecode.conformance import ToyModel, enumerate_sequences, toy_context, total_variation
from anydecode.conformance.enumerate import tv_vectors
from anydecode.conformance.reference import planted_top_p_before_temperature, target_distribution
from anydecode.conformance.exact_checks import sampling_draws, sampling_exact
from anydecode.registry import get_decoder

logits_st = st.lists(st.floats(-8, 8, allow_nan=False, width=32), min_size=2, max_size=12).map(np.array)
config_st = st.fixed_dictionaries({
    "temperature": st.floats(0.05, 3.0),
    "top_k": st.integers(0, 12),
    "top_p": st.floats(0.05, 1.0),
    "min_p": st.floats(0.0, 0.9),
})


@given(logits=logits_st, kwargs=config_st)
@settings(max_examples=150, deadline=None)
def test_warped_distribution_equals_reference_exactly(logits, kwargs):
    ours = warped_probs(torch.from_numpy(logits), SamplingConfig(**kwargs)).numpy()
    ref = target_distribution(logits, **kwargs)
    assert tv_vectors(ours, ref) < 1e-9


def test_planted_bug_twin_is_rejected_by_the_same_comparison():
    logits = np.array([3.0, 2.6, 2.2, 1.0, 0.0, -1.0])
    kwargs = dict(temperature=2.0, top_p=0.6)
    ours = warped_probs(torch.from_numpy(logits), SamplingConfig(**kwargs)).numpy()
    assert tv_vectors(ours, target_distribution(logits, **kwargs)) < 1e-9
    assert tv_vectors(ours, planted_top_p_before_temperature(logits, **kwargs)) > 0.05


def test_exact_sequence_distribution_on_toy_models():
    (check,) = sampling_exact(get_decoder("sample"), quick=True)
    assert check.passed and check.value < 1e-12, check


def test_shared_loop_draws_follow_the_enumerated_distribution():
    (check,) = sampling_draws(get_decoder("sample"), quick=True)
    assert check.passed, check


@given(probs=st.lists(st.floats(0, 1), min_size=2, max_size=8).filter(lambda p: sum(p) > 1e-3),
       seed=st.integers(0, 10_000))
@settings(max_examples=100, deadline=None)
def test_categorical_never_draws_a_zero_probability_token(probs, seed):
    p = torch.tensor(probs, dtype=torch.float64)
    p = p / p.sum()
    idx = categorical(p.unsqueeze(0).repeat(16, 1), make_generator(seed))
    assert bool((p[idx] > 0).all())


def test_categorical_frequencies_match():
    p = torch.tensor([[0.1, 0.0, 0.6, 0.3]], dtype=torch.float64)
    gen = make_generator(7)
    draws = torch.cat([categorical(p.repeat(1000, 1), gen) for _ in range(20)])
    freq = torch.bincount(draws, minlength=4).double() / draws.numel()
    assert torch.allclose(freq, p[0], atol=0.01)


def test_seeded_sampling_is_reproducible_and_seed_sensitive():
    model = ToyModel.seeded(7, seed=3, eos_token_id=6)
    config = SamplingConfig(temperature=1.0, seed=11)
    run = lambda c: SAMPLE.run(c, toy_context(model, [[1, 2]], 12)).sequences[0]  # noqa: E731
    assert run(config) == run(config)
    outputs = {tuple(run(config.replace(seed=s))) for s in range(8)}
    assert len(outputs) > 1


def test_greedy_follows_argmax_and_stops_at_eos():
    table = {(0,): [0.1, 0.7, 0.2], (0, 1): [0.2, 0.3, 0.5]}
    model = ToyModel(3, table=table, eos_token_id=2)
    result = GREEDY.run(GREEDY.configure(), toy_context(model, [[0]], 10))
    assert result.sequences == [[1, 2]] and result.finish_reasons == ["stop"]


def test_max_new_tokens_is_never_exceeded():
    model = ToyModel.seeded(5, seed=1)  # no EOS
    for n in (0, 1, 5):
        result = GREEDY.run(GREEDY.configure(), toy_context(model, [[1], [2]], n))
        assert all(len(s) == n for s in result.sequences)
        assert result.finish_reasons == ["length", "length"]


def test_batch_rows_finish_independently():
    model = ToyModel(3, table={(0,): [0, 0, 1.0], (1,): [0, 1.0, 0]}, default=[0.0, 1.0, 0.0], eos_token_id=2)
    result = GREEDY.run(GREEDY.configure(), toy_context(model, [[0], [1]], 3))
    assert result.sequences == [[2], [1, 1, 1]]
    assert result.finish_reasons == ["stop", "length"]


class _BanAll(LogitsTransform):
    def __init__(self):
        self.finished = []

    def apply(self, state, generated_ids, logits):
        return torch.full_like(logits, float("-inf")) if len(generated_ids) >= 2 else logits

    def finish(self, state, generated_ids, reason):
        self.finished.append((list(generated_ids), reason))


def test_dead_end_ends_the_row_with_its_reason_and_emits_nothing_forbidden():
    ban = _BanAll()
    dec = transform_decoder("ban", DecoderConfig, lambda c, x: ban)
    model = ToyModel.seeded(4, seed=0)
    result = dec.run(DecoderConfig(), toy_context(model, [[1]], 10))
    assert len(result.sequences[0]) == 2 and result.finish_reasons == ["dead_end"]
    assert ban.finished == [(result.sequences[0], "dead_end")]


def test_negative_max_new_tokens_is_a_config_error():
    with pytest.raises(ConfigError, match="max_new_tokens=-1"):
        GREEDY.run(GREEDY.configure(), toy_context(ToyModel.seeded(3), [[0]], -1))


def test_enumeration_of_greedy_is_one_sequence():
    model = ToyModel.seeded(4, seed=5, eos_token_id=3)
    dist = enumerate_sequences(model, (0,), 4, lambda m, g, p: warped_probs(m.logits(p + g), SamplingConfig(0)).numpy())
    assert len(dist) == 1 and abs(sum(dist.values()) - 1) < 1e-12
    assert total_variation(dist, dist) == 0


def test_decode_context_defaults():
    ctx = DecodeContext(vocab_size=3)
    assert ctx.processors is None and ctx.stopping is None and ctx.owner is None and ctx.max_new_tokens == 64
    assert ctx.pad == 0 and not hasattr(ctx, "extra")


def test_decode_context_takes_no_undeclared_keys():
    """Issue 12: adapters passed seven undeclared keys through ``ctx.extra`` and each decoder read the ones it
    remembered. Every field is declared now, and setting any other attribute is an error."""
    ctx = DecodeContext(vocab_size=3)
    with pytest.raises(AttributeError):
        ctx.model = object()  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        ctx.extra = {}  # type: ignore[attr-defined]
    ctx.owner = object()  # a declared field


class _Finishes(LogitsTransform):
    def __init__(self):
        self.finished: list[tuple[int, str]] = []

    def start(self, prompt_ids):
        return len(prompt_ids)

    def apply(self, state, generated_ids, logits):
        return logits

    def finish(self, state, generated_ids, reason):
        self.finished.append((state, reason))


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_the_loop_finishes_every_row_when_something_raises(error):
    """Issue 12: an exception inside the loop (here a streaming callback; a client's Ctrl-C alike) used to skip
    ``transform.finish``, leaving grammar and ASAp state open. Every row is finished once, as "abort", and the
    error still reaches the caller."""
    from anydecode.algorithms.loop import autoregressive
    from anydecode.algorithms.sampling.select import TokenSelector
    from anydecode.conformance import ToyModel, toy_context

    calls = []

    def on_token(row, token):
        calls.append(row)
        if len(calls) == 3:
            raise error

    transform = _Finishes()
    ctx = toy_context(ToyModel.seeded(9, seed=2), [[1, 2], [3, 4, 5]], 8, on_token=on_token)
    with pytest.raises(type(error)):
        autoregressive(ctx, transform, TokenSelector(greedy=True))
    assert sorted(transform.finished) == [(2, "abort"), (3, "abort")]


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.sampled_from([0.0, 1.0, -1.0, 2.5, float("inf"), float("-inf"), float("nan"), 1e-30]),
                       min_size=1, max_size=12),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]))
def test_the_greedy_token_is_torchs_argmax(values, dtype):
    """argmax_token (numpy for CPU rows) picks torch's index: the first maximum, the first NaN, ties low."""
    from anydecode.algorithms.sampling.select import argmax_token

    row = torch.tensor(values, dtype=dtype)
    assert argmax_token(row) == int(row.argmax())
    assert argmax_token(row.unsqueeze(0).expand(3, -1)[1]) == int(row.argmax())  # a view, as the loop passes
    # a vocabulary-sized row (numpy's vectorised loop), the drawn values placed late
    long = torch.cat([torch.full((4093,), -5.0, dtype=dtype), row, torch.full((7,), -5.0, dtype=dtype)])
    assert argmax_token(long) == int(long.argmax())
