"""DeAL on toy models: lam=0 is beam search, rewards steer the search, lookaheads are greedy, failures are clean."""

from __future__ import annotations

import pytest
from anydecode.algorithms.search.beam import beam_search
from anydecode.algorithms.search.deal import DealConfig, deal_search, run_deal
from anydecode.algorithms.search.rewards import (
    KeywordsConfig,
    KeywordsReward,
    Reward,
    RewardError,
    RewardInput,
)
from anydecode.conformance import ToyModel, toy_context
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anydecode import ConfigError, RegistryError, get_registry

WORDS = ["<eos>", "the", "sea", "boat", "storm", "calm", "night", "wind", "rain"]


class WordTokenizer:
    """Token i is WORDS[i]."""

    def decode(self, ids, skip_special_tokens=False):
        return " ".join(WORDS[i] for i in ids if not (skip_special_tokens and i == 0))

    def encode(self, text):
        return [WORDS.index(w) for w in text.split()]


def ctx_for(model, prompts, max_new):
    return toy_context(model, prompts, max_new, tokenizer=WordTokenizer())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(vocab=st.integers(4, 8), seed=st.integers(0, 10_000), beam=st.integers(1, 3), max_new=st.integers(1, 6),
       length_penalty=st.sampled_from([1.0, 0.0, 2.0]), early_stopping=st.sampled_from([False, True, "never"]))
def test_deal_with_lam_zero_is_beam_search_of_the_same_width(vocab, seed, beam, max_new, length_penalty,
                                                             early_stopping):
    model = ToyModel.seeded(vocab, seed=seed, eos_token_id=0)
    prompts = [[1], [2, 3]]
    ref = beam_search(toy_context(model, prompts, max_new), num_beams=beam, length_penalty=length_penalty,
                      early_stopping=early_stopping, num_return_sequences=beam)
    reward = KeywordsReward(KeywordsConfig(keywords=("sea",)))
    got = deal_search(ctx_for(model, prompts, max_new), reward=reward, beam=beam, k=2 * beam, lookahead=3, lam=0.0,
                      length_penalty=length_penalty, early_stopping=early_stopping, num_return_sequences=beam)
    real = [i for i, s in enumerate(ref.scores) if s > -1e8]  # beam's filler beams have no DeAL counterpart
    assert [ref.sequences[i] for i in real] == [got.sequences[i] for i in real]
    assert [ref.scores[i] for i in real] == [got.scores[i] for i in real]
    assert got.stats["reward_calls"] == 0


def skewed_model() -> ToyModel:
    """'the' is always likely, 'storm' rarely; EOS grows more likely with length."""
    def dist(prefix):
        n = len(prefix)
        p = [0.02 + 0.05 * n, 0.5, 0.1, 0.1, 0.03, 0.1, 0.05, 0.05, 0.05]
        return p
    return ToyModel(len(WORDS), default=dist, eos_token_id=0)


def test_keyword_reward_pulls_a_rare_keyword_into_the_output():
    model = skewed_model()
    plain = deal_search(ctx_for(model, [[1]], 5), reward=None, beam=2, k=4, lookahead=0, lam=0.0)
    reward = KeywordsReward(KeywordsConfig(keywords=("storm",)))
    guided = deal_search(ctx_for(model, [[1]], 5), reward=reward, beam=2, k=9, lookahead=2, lam=20.0)
    assert 4 not in plain.sequences[0]
    assert 4 in guided.sequences[0]
    assert guided.stats["reward_calls"] > 0


class Recorder(Reward):
    name = "recorder"

    def __init__(self):
        self.seen: list[RewardInput] = []

    def score(self, item):
        self.seen.append(item)
        return 0.0


def test_lookahead_rolls_each_candidate_out_greedily():
    model = ToyModel.seeded(len(WORDS), seed=4, eos_token_id=None)
    reward = Recorder()
    deal_search(ctx_for(model, [[1]], 6), reward=reward, beam=1, k=3, lookahead=3, lam=1.0)
    first_step = [item for item in reward.seen if len(item.tokens) == 4][:3]
    assert len(first_step) == 3
    for item in first_step:
        prefix = [1, item.tokens[0]]
        for token in item.tokens[1:]:
            assert token == int(model.probs(prefix).argmax())
            prefix.append(token)
        assert item.text == WordTokenizer().decode(list(item.tokens), skip_special_tokens=True) and not item.finished


def test_a_candidate_that_ends_is_scored_on_its_own_full_text():
    def dist(prefix):
        return [0.6, 0.1, 0.1, 0.1, 0.02, 0.02, 0.02, 0.02, 0.02]
    model = ToyModel(len(WORDS), default=dist, eos_token_id=0)
    reward = Recorder()
    deal_search(ctx_for(model, [[1]], 3), reward=reward, beam=1, k=3, lookahead=2, lam=1.0)
    ended = [i for i in reward.seen if i.finished and len(i.tokens) == 0]
    assert ended and all(i.text == "" for i in ended)


def test_all_candidates_of_a_step_are_rolled_out_together():
    model = ToyModel.seeded(len(WORDS), seed=9, eos_token_id=None)
    ctx = ctx_for(model, [[1], [2]], 4)
    shapes = []
    original = ctx.session.append

    def append(tokens):
        shapes.append(tuple(tokens.shape))
        return original(tokens)

    ctx.session.append = append
    deal_search(ctx, reward=Recorder(), beam=2, k=3, lookahead=2, lam=1.0)
    # step 1: 2 prompts x 1 state x 3 candidates; then 2 x 2 x 3; two lookahead passes per step but the last
    assert shapes[:2] == [(6, 1), (6, 1)] and shapes[2:4] == [(12, 1), (12, 1)]


class Exploding(Reward):
    name = "exploding"

    def score(self, item):
        if "storm" in item.text:
            raise ValueError("no storms here")
        return 0.0


def test_a_failing_reward_stops_the_search_with_its_name_and_the_text():
    model = skewed_model()
    with pytest.raises(RewardError, match=r"reward 'exploding' failed on text '[^']*storm[^']*'.*no storms here"):
        deal_search(ctx_for(model, [[1]], 4), reward=Exploding(), beam=2, k=9, lookahead=1, lam=1.0)


def test_registered_deal_resolves_rewards_and_their_settings():
    decoder = get_registry().decoder("deal")
    config = decoder.configure({"reward": "keywords,length", "keywords": "sea,boat,storm", "length_max": "12",
                                "reward_weights": "1,0.5", "lam": "2"}, from_strings=True)
    reward = config.build_reward()
    item = RewardInput("", "a sea and a boat", (), True)
    assert reward(item) == pytest.approx(2 / 3)
    result = decoder.run(config, ctx_for(skewed_model(), [[1]], 4))
    assert len(result.sequences) == 1


@pytest.mark.parametrize("values,error,message", [
    ({"reward": "keywordz", "keywords": "a"}, RegistryError, "unknown reward 'keywordz' (did you mean 'keywords'?)"),
    ({"reward": "keywords"}, ConfigError, "keywords=[] must name at least one"),
    ({"reward": "keywords", "keywords": "a", "colour": "red"}, ConfigError, "unknown setting 'colour'"),
    ({"lam": 1.0}, ConfigError, "lam=1.0 weighs a reward but none is chosen"),
    ({"reward": "keywords,length", "keywords": "a", "reward_weights": "1"}, ConfigError,
     "reward_weights=[1.0] has 1 values for 2 rewards"),
    ({"reward": "callable", "function": "nocolon"}, ConfigError, "must be written as 'module:function'"),
    ({"beam": 2, "num_return_sequences": 3}, ConfigError, "num_return_sequences=3 must be <= beam=2"),
])
def test_bad_deal_settings_name_the_problem(values, error, message):
    with pytest.raises(error) as info:
        get_registry().decoder("deal").configure(values, from_strings=True)
    assert message in str(info.value)


def test_run_deal_builds_the_configured_reward():
    config = DealConfig.from_mapping({"reward": "keywords", "keywords": "storm", "beam": 2, "k": 9, "lam": 20.0,
                                      "lookahead": 2})
    result = run_deal(config, ctx_for(skewed_model(), [[1]], 5))
    assert 4 in result.sequences[0]
