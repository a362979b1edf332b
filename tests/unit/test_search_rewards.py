"""Rewards: keywords, length, regex, callable, reward_model (a tiny classification model built here), sums."""

from __future__ import annotations

import math

import pytest
import torch
from anydecode.algorithms.search.rewards import (
    CallableConfig,
    CallableReward,
    KeywordsConfig,
    KeywordsReward,
    LengthConfig,
    LengthReward,
    RegexConfig,
    RegexReward,
    Reward,
    RewardError,
    RewardInput,
    RewardModelConfig,
    WeightedSum,
    checked_scores,
    label_index,
)

from anydecode import ConfigError, get_registry
from anydecode.plugins.hf.rewards import RewardModelReward


def item(text, finished=True, tokens=()):
    return RewardInput("", text, tuple(tokens), finished)


def test_keywords_reward_is_the_share_of_keywords_present_as_word_starts():
    reward = KeywordsReward(KeywordsConfig(keywords=("sea", "boat", "storm")))
    assert reward(item("Boats rock on the sea.")) == pytest.approx(2 / 3)
    assert reward(item("research")) == 0.0  # 'sea' inside a word does not count
    assert reward(item("A storm hit the boat at sea")) == 1.0


def test_ordered_keywords_count_the_longest_run_in_order():
    reward = KeywordsReward(KeywordsConfig(keywords=("sea", "boat", "storm"), keywords_ordered=True))
    assert reward(item("sea boat storm")) == 1.0
    assert reward(item("storm boat sea")) == pytest.approx(1 / 3)
    assert reward(item("boat storm then sea")) == pytest.approx(2 / 3)


def test_length_reward_is_zero_inside_the_range_and_ignores_shortness_of_partial_text():
    reward = LengthReward(LengthConfig(length_min=3, length_max=5))
    assert reward(item("one two three four")) == 0.0
    assert reward(item("one two three four five six seven")) == pytest.approx(-2 / 5)
    assert reward(item("one", finished=True)) == pytest.approx(-2 / 5)
    assert reward(item("one", finished=False)) == 0.0
    tokens = LengthReward(LengthConfig(length_max=2, length_unit="tokens"))
    assert tokens(item("x", tokens=(1, 2, 3))) == pytest.approx(-1 / 2)


def test_regex_reward_matches_anywhere_or_whole():
    assert RegexReward(RegexConfig(pattern=r"\d+"))(item("in 1999")) == 1.0
    assert RegexReward(RegexConfig(pattern=r"\d+", fullmatch=True))(item("in 1999")) == 0.0
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        RegexConfig(pattern="(")


def reward_len(text: str) -> float:
    return float(len(text))


def reward_raises(text: str) -> float:
    raise ValueError(f"cannot score {len(text)} characters")


def reward_nan(text: str) -> float:
    return math.nan


def test_callable_reward_imports_module_function():
    reward = CallableReward(CallableConfig(function=f"{__name__}:reward_len"))
    assert reward(item("four")) == 4.0


@pytest.mark.parametrize("spec,message", [
    ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
    (f"{__name__}:missing", "has no attribute 'missing'"),
    (f"{__name__}:WORDS_ABSENT", "has no attribute"),
])
def test_callable_reward_bad_names(spec, message):
    with pytest.raises(ConfigError, match=message):
        CallableReward(CallableConfig(function=spec))


def test_a_raising_callable_is_reported_with_the_reward_and_the_text():
    reward = CallableReward(CallableConfig(function=f"{__name__}:reward_raises"))
    with pytest.raises(RewardError) as info:
        checked_scores(reward, [item("fine"), item("the bad one")])
    text = str(info.value)
    assert f"callable {__name__}:reward_raises" in text and "'fine'" in text and "cannot score" in text


def test_a_non_finite_reward_is_an_error():
    reward = CallableReward(CallableConfig(function=f"{__name__}:reward_nan"))
    with pytest.raises(RewardError, match="returned nan for text 'x'"):
        checked_scores(reward, [item("x")])


def test_weighted_sum_combines_rewards():
    kw = KeywordsReward(KeywordsConfig(keywords=("a", "b")))
    rx = RegexReward(RegexConfig(pattern="z"))
    total = WeightedSum([kw, rx], [2.0, -1.0])
    assert total.score_batch([item("a z"), item("a b")]) == [0.0, 2.0]
    with pytest.raises(ConfigError, match="reward_weights has 1 values for 2 rewards"):
        WeightedSum([kw, rx], [1.0])


def test_every_builtin_reward_is_registered():
    names = set(get_registry().items("reward"))
    assert {"keywords", "length", "regex", "callable", "reward_model"} <= names


def test_a_third_party_reward_takes_its_settings_by_name():
    import dataclasses

    from anydecode import ComponentSpec, DecoderConfig, config_field, hookimpl

    @dataclasses.dataclass(frozen=True)
    class ShoutConfig(DecoderConfig):
        owner = "reward"
        shout_weight: float = config_field(1.0)

    class Shout(Reward):
        name = "shout"

        def __init__(self, config):
            self.w = config.shout_weight

        def score(self, it):
            return self.w * it.text.count("!")

    class Plugin:
        @hookimpl
        def anydecode_register_rewards(self, register):
            register(ComponentSpec("shout", Shout, ShoutConfig, "exclamation marks"))

    registry = get_registry()
    with registry.plugin(Plugin(), name="shout-plugin"):
        config = registry.decoder("deal").configure({"reward": "shout", "shout_weight": "3"}, from_strings=True)
        assert config.build_reward()(item("hi!!")) == 6.0
        with pytest.raises(ConfigError, match="unknown setting 'shout_wieght'"):
            registry.decoder("deal").configure({"reward": "shout", "shout_wieght": "3"})


# -- reward model ------------------------------------------------------------------------------------------------
def test_label_index_accepts_names_and_indices_and_rejects_misfits():
    labels = {0: "negative", 1: "positive"}
    assert label_index(labels, 2, "positive", "m") == 1
    assert label_index(labels, 2, "0", "m") == 0
    assert label_index({0: "LABEL_0"}, 1, None, "m") == 0
    with pytest.raises(ConfigError, match="has 2 labels .*set reward_label"):
        label_index(labels, 2, None, "m")
    with pytest.raises(ConfigError, match="reward_label='happy' is not a label .*0=negative, 1=positive"):
        label_index(labels, 2, "happy", "m")
    with pytest.raises(ConfigError, match="reward_label='5' is out of range"):
        label_index(labels, 2, "5", "m")


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    """A random 2-label Llama classifier and a word-level tokenizer, saved like a Hub model folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "the", "sea", "is", "calm", "storm", "boat", "a"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=2, pad_token_id=0,
                         id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    model = LlamaForSequenceClassification(config).eval()
    folder = tmp_path_factory.mktemp("reward_model")
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return str(folder), model, fast


def test_reward_model_scores_the_chosen_label_logit(tiny_classifier):
    folder, model, tok = tiny_classifier
    reward = RewardModelReward(RewardModelConfig(reward_model_path=folder, reward_label="positive"))
    texts = ["the sea is calm", "a storm"]
    got = reward.score_batch([item(t) for t in texts])
    for text, value in zip(texts, got):
        with torch.no_grad():
            expected = model(**tok([text], return_tensors="pt")).logits[0, 1].item()
        assert value == pytest.approx(expected, abs=1e-5)


def test_reward_model_with_labels_that_do_not_fit_is_a_config_error(tiny_classifier):
    folder, _model, _tok = tiny_classifier
    with pytest.raises(ConfigError, match="has 2 labels"):
        RewardModelReward(RewardModelConfig(reward_model_path=folder))
    with pytest.raises(ConfigError, match="'joy' is not a label"):
        RewardModelReward(RewardModelConfig(reward_model_path=folder, reward_label="joy"))


def test_reward_model_that_cannot_be_loaded_names_the_path(tmp_path):
    with pytest.raises(ConfigError, match="cannot be loaded as a classification model"):
        RewardModelReward(RewardModelConfig(reward_model_path=str(tmp_path / "absent")))
