"""The ``greedy`` and ``sample`` decoders: both run in the shared autoregressive loop."""

from __future__ import annotations

import dataclasses

from ..contracts.config import DecoderConfig, SamplingConfig
from ..contracts.decoder import Decoder, TransformContext
from ..contracts.transform import IdentityTransform, LogitsTransform
from .warpers import SamplingWarp


@dataclasses.dataclass(frozen=True)
class GreedyConfig(DecoderConfig):
    """Greedy decoding has no settings."""


def _identity(config: GreedyConfig, context: TransformContext) -> LogitsTransform:
    return IdentityTransform()


def _warp(config: SamplingConfig, context: TransformContext) -> LogitsTransform:
    return IdentityTransform() if config.greedy else SamplingWarp(config)


GREEDY = Decoder(
    name="greedy",
    config_cls=GreedyConfig,
    kind="transform",
    description="the most likely token at each step",
    make_transform=_identity,
)

SAMPLE = Decoder(
    name="sample",
    config_cls=SamplingConfig,
    kind="transform",
    description="ancestral sampling with temperature, top_k, top_p and min_p (in that order) and a seed",
    make_transform=_warp,
)
