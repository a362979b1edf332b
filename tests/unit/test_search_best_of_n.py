"""Best-of-N on toy models: exactly the argmax among the samples ``sample`` draws with the same seed."""

from __future__ import annotations

import math

import pytest
from anydecode.algorithms.search.best_of_n import BestOfNConfig, run_best_of_n
from anydecode.algorithms.search.rewards import Reward, RewardError
from anydecode.conformance import ToyModel, toy_context
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anydecode import get_registry


class CountToken(Reward):
    """Number of times a token occurs (many ties, so the log-likelihood tie-break matters)."""

    name = "count"

    def __init__(self, token: int):
        self.token = token

    def score(self, item):
        return float(sum(t == self.token for t in item.tokens))


def loglik(model, prompt, tokens):
    total, prefix = 0.0, list(prompt)
    for t in tokens:
        total += math.log(model.probs(prefix)[t])
        prefix.append(t)
    return total


def expected_choice(samples, model, prompt, reward_token):
    keys = [(float(sum(t == reward_token for t in s if t != model.eos_token_id)), loglik(model, prompt, s))
            for s in samples]
    return samples[max(range(len(samples)), key=lambda i: keys[i])]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(vocab=st.integers(3, 6), seed=st.integers(0, 10_000), n=st.integers(1, 6), sampler_seed=st.integers(0, 2**31),
       temperature=st.sampled_from([1.0, 0.7, 1.5]), top_k=st.integers(0, 3), max_new=st.integers(1, 6))
def test_best_of_n_is_the_argmax_among_the_samples_sample_draws_with_the_same_seed(vocab, seed, n, sampler_seed,
                                                                                   temperature, top_k, max_new):
    model = ToyModel.seeded(vocab, seed=seed, eos_token_id=0)
    prompts = [[1], [2, 2]]
    sample = get_registry().decoder("sample")
    sampling = sample.configure({"temperature": temperature, "top_k": top_k, "seed": sampler_seed})
    repeated = [p for p in prompts for _ in range(n)]
    drawn = sample.run(sampling, toy_context(model, repeated, max_new)).sequences

    config = BestOfNConfig(num_samples=n, temperature=temperature, top_k=top_k, seed=sampler_seed)
    result = run_best_of_n(config, toy_context(model, prompts, max_new), reward=CountToken(1))
    for p, prompt in enumerate(prompts):
        mine = drawn[p * n: (p + 1) * n]
        assert result.sequences[p] == expected_choice(mine, model, prompt, 1)
    for r, s in enumerate(drawn):
        assert result.stats["sample_logliks"][r] == pytest.approx(loglik(model, repeated[r], s), abs=1e-9)


def test_planted_bug_returning_the_first_sample_is_rejected_by_the_check():
    model = ToyModel.seeded(6, seed=1, eos_token_id=0)
    sample = get_registry().decoder("sample")
    rejected = 0
    for seed in range(5):
        drawn = sample.run(sample.configure({"seed": seed}), toy_context(model, [[1]] * 8, 6)).sequences
        rejected += drawn[0] != expected_choice(drawn, model, [1], 1)
    assert rejected > 0


def test_without_a_reward_the_most_likely_sample_wins():
    model = ToyModel.seeded(5, seed=3, eos_token_id=0)
    result = run_best_of_n(BestOfNConfig(num_samples=6, seed=2), toy_context(model, [[1]], 5))
    assert result.scores[0] == max(result.stats["sample_logliks"])


def test_registered_best_of_n_with_a_keyword_reward():
    decoder = get_registry().decoder("best_of_n")
    config = decoder.configure({"num_samples": "4", "seed": "3", "reward": "regex", "pattern": "7"},
                               from_strings=True)
    model = ToyModel.seeded(9, seed=3, eos_token_id=0)
    result = decoder.run(config, toy_context(model, [[1]], 6))
    rewards = result.stats["sample_rewards"]
    assert result.scores[0] == max(rewards)


def test_a_failing_reward_names_itself_and_the_text():
    class Broken(Reward):
        name = "broken"

        def score(self, item):
            raise KeyError("boom")

    model = ToyModel.seeded(5, seed=3, eos_token_id=0)
    with pytest.raises(RewardError, match=r"reward 'broken' failed on text '[\d ]*': KeyError"):
        run_best_of_n(BestOfNConfig(num_samples=2, seed=2), toy_context(model, [[1]], 3), reward=Broken())
