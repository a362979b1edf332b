"""The ``greedy`` and ``sample`` decoders: both run in the shared autoregressive loop."""

from __future__ import annotations

import dataclasses

from ..contracts.config import DecoderConfig, SamplingConfig
from ..contracts.decoder import TransformContext
from ..contracts.transform import IdentityTransform, LogitsTransform
from ..loop import transform_decoder
from .warpers import SamplingWarp


@dataclasses.dataclass(frozen=True)
class GreedyConfig(DecoderConfig):
    """Greedy decoding has no settings."""


def _identity(config: GreedyConfig, context: TransformContext) -> LogitsTransform:
    return IdentityTransform()


def _warp(config: SamplingConfig, context: TransformContext) -> LogitsTransform:
    return IdentityTransform() if config.greedy else SamplingWarp(config)


GREEDY = transform_decoder(
    "greedy", GreedyConfig, _identity, "the most likely token at each step",
    claim="greedy-identical", claim_note="the runtime's own greedy decoding, token for token",
)

SAMPLE = transform_decoder(
    "sample", SamplingConfig, _warp,
    "ancestral sampling with temperature, top_k, top_p and min_p (in that order) and a seed",
    claim="sampling", claim_note="ancestral sampling from the target after temperature, top_k, top_p, min_p",
)
