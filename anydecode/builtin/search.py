"""Built-in plugin: the search decoders (``beam``, ``dbs``, ``deal``, ``best_of_n``) and their rewards."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from anydecode.hookspecs import hookimpl


def _registry_reward(name: str) -> tuple[Any, Any]:
    """A reward's config class and factory from the plugin registry (third-party rewards included)."""
    from anydecode.registry import get_registry

    spec = get_registry().get("reward", name)
    return spec.config_cls, spec.factory


@functools.cache
def _registry_configs() -> tuple[type, type]:
    """The DeAL and best-of-N configs, resolving reward names through the registry."""
    from anydecode.algorithms.search.best_of_n import BestOfNConfig
    from anydecode.algorithms.search.deal import DealConfig

    deal: type = dataclasses.dataclass(frozen=True)(
        type("DealConfig", (DealConfig,), {"reward_lookup": staticmethod(_registry_reward),
                                           "__doc__": DealConfig.__doc__, "__module__": __name__}))
    best: type = dataclasses.dataclass(frozen=True)(
        type("BestOfNConfig", (BestOfNConfig,), {"reward_lookup": staticmethod(_registry_reward),
                                                 "__doc__": BestOfNConfig.__doc__, "__module__": __name__}))
    return deal, best


@hookimpl
def anydecode_register_decoders(register):
    from anydecode.algorithms.search.decoders import BEAM, BEST_OF_N, DEAL, DIVERSE_BEAM

    deal_config, best_config = _registry_configs()
    register(BEAM)
    register(DIVERSE_BEAM)
    register(dataclasses.replace(DEAL, config_cls=deal_config))
    register(dataclasses.replace(BEST_OF_N, config_cls=best_config))


@hookimpl
def anydecode_register_rewards(register):
    from anydecode.algorithms.search.rewards import BUILTIN_REWARDS
    from anydecode.registry import ComponentSpec

    for name, (config_cls, factory, description) in BUILTIN_REWARDS.items():
        register(ComponentSpec(name=name, factory=factory, config_cls=config_cls, description=description))
