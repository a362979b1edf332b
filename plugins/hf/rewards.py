"""The ``reward_model`` reward: a transformers sequence-classification model's logit for one label.

Its settings (``RewardModelConfig``) live with the other rewards in ``anydecode.algorithms.search.rewards``; this
factory runs transformers, so it lives in the transformers adapter and is registered by the built-in search plugin.
"""

from __future__ import annotations

from collections.abc import Sequence

from anydecode.algorithms.contracts.errors import ConfigError
from anydecode.algorithms.search.rewards import Reward, RewardInput, RewardModelConfig, label_index


class RewardModelReward(Reward):
    """Logit of one label of ``AutoModelForSequenceClassification`` (transformers imported on first use)."""

    name = "reward_model"

    def __init__(self, config: RewardModelConfig):
        try:
            import torch
            from transformers import AutoModelForSequenceClassification, AutoTokenizer
        except ImportError as exc:
            raise ConfigError(f"the reward_model reward needs transformers ({exc}): pip install transformers") from None
        source = config.reward_model_path
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source)
            self.model = AutoModelForSequenceClassification.from_pretrained(source)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"reward_model_path={source!r} cannot be loaded as a classification model: {exc}") from None
        self.model.eval()
        cfg = self.model.config
        self.index = label_index(getattr(cfg, "id2label", {}), int(cfg.num_labels), config.reward_label, repr(source))
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
            cfg.pad_token_id = self.tokenizer.pad_token_id
        self.pair = config.reward_pair
        self.batch_size = config.reward_batch_size
        self._torch = torch

    def score_batch(self, items: Sequence[RewardInput]) -> list[float]:
        out: list[float] = []
        for start in range(0, len(items), self.batch_size):
            chunk = items[start: start + self.batch_size]
            texts = [i.text for i in chunk]
            if self.pair:
                enc = self.tokenizer([i.prompt for i in chunk], texts, return_tensors="pt", padding=True,
                                     truncation=True)
            else:
                enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True)
            with self._torch.no_grad():
                logits = self.model(**enc).logits
            out.extend(float(v) for v in logits[:, self.index].float().tolist())
        return out
