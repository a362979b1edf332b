"""Configs of the speculative decoders: the user's sampling settings (greedy by default) joined with a drafter's."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..contracts.config import DecoderConfig, SamplingConfig, config_field


@dataclasses.dataclass(frozen=True)
class SpeculativeSampling(SamplingConfig):
    """Sampling settings of a speculative decoder; temperature 0 (greedy) unless asked otherwise.

    The target distribution verified against is the one these settings describe.
    """

    temperature: float = config_field(0.0, ge=0.0, request=True,
                                       help="softmax temperature; 0 (the default) is greedy")
    cost_aware: bool = config_field(
        True, help="fit draft lengths to the measured cost of a forward (greedy, and deterministic drafts under "
                   "sampling; a draft model's sampled drafts use the session's fixed cost hint)")


def sampling_part(config: DecoderConfig) -> SamplingConfig:
    """The plain sampling settings inside a speculative decoder's config."""
    names = {f.name for f in SamplingConfig.fields()}
    return SamplingConfig(**{k: v for k, v in config.as_dict().items() if k in names})


def drafter_part(config: DecoderConfig, drafter_cls: type[DecoderConfig]) -> DecoderConfig:
    """The drafter's settings inside a shortcut decoder's config (e.g. ``iad``)."""
    names = {f.name for f in drafter_cls.fields()}
    return drafter_cls(**{k: v for k, v in config.as_dict().items() if k in names})


def shortcut_config(name: str, drafter_cls: type[DecoderConfig]) -> type[DecoderConfig]:
    """A decoder config holding the sampling settings and the settings of one drafter."""
    namespace: dict[str, Any] = {
        "__doc__": f"Settings of the ``{name}`` decoder: sampling (greedy by default) and the drafter's.",
        "__module__": __name__,
        "owner": "decoder",
    }
    cls = type(f"{drafter_cls.__name__.removesuffix('Config')}DecoderConfig", (SpeculativeSampling, drafter_cls),
               namespace)
    return dataclasses.dataclass(frozen=True)(cls)
