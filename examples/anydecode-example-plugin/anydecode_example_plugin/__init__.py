"""A third-party anydecode plugin: locally typical sampling (Meister et al., 2023) as a transform decoder.

Installed, it shows up in ``anydecode decoders`` and runs everywhere a transform decoder runs:
``anydecode run --decoder typical --set typical_mass=0.9``, ``custom_generate=anydecode.plugins.hf.generate``,
``anydecode.plugins.llamacpp.generate(llm, prompt, decoder="typical")``.
"""

from __future__ import annotations

import dataclasses

import torch

import anydecode
from anydecode import LogitsTransform, SamplingConfig, config_field


@dataclasses.dataclass(frozen=True)
class TypicalConfig(SamplingConfig):
    typical_mass: float = config_field(0.9, gt=0.0, le=1.0, help="probability mass of the most typical tokens kept")


class TypicalFilter(LogitsTransform):
    """Keeps the tokens whose surprisal is closest to the distribution's entropy, up to ``typical_mass``."""

    def __init__(self, config: TypicalConfig):
        self.config = config

    def apply(self, state, generated_ids, logits):
        logits = logits / self.config.temperature if self.config.temperature > 0 else logits
        logp = torch.log_softmax(logits.double(), dim=-1)
        p = logp.exp()
        entropy = -(p * torch.nan_to_num(logp, neginf=0.0)).sum()
        distance = (-logp - entropy).abs()
        order = torch.argsort(distance, stable=True)
        before = torch.cumsum(p[order], dim=0) - p[order]
        drop_sorted = before >= self.config.typical_mass
        drop_sorted[0] = False
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        return logits.masked_fill(drop, float("-inf"))


TYPICAL = anydecode.Decoder(
    name="typical",
    config_cls=TypicalConfig,
    kind="transform",
    description="locally typical sampling (example third-party plugin)",
    claim="sampling",
    claim_note="ancestral sampling from the model after the typical filter",
    make_transform=lambda config, context: TypicalFilter(config),
)


@anydecode.hookimpl
def anydecode_register_decoders(register):
    register(TYPICAL)
