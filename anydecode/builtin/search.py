"""Built-in plugin: the search decoders (``beam``, ``dbs``, ``deal``, ``best_of_n``) and their rewards."""

from anydecode.hookspecs import hookimpl


@hookimpl
def anydecode_register_decoders(register):
    from anydecode.algorithms.search.decoders import BEAM, BEST_OF_N, DEAL, DIVERSE_BEAM

    for decoder in (BEAM, DIVERSE_BEAM, DEAL, BEST_OF_N):
        register(decoder)


@hookimpl
def anydecode_register_rewards(register):
    from anydecode.algorithms.contracts.component import ComponentSpec
    from anydecode.algorithms.search.rewards import BUILTIN_REWARDS, RewardModelConfig

    for name, (config_cls, factory, description) in BUILTIN_REWARDS.items():
        register(ComponentSpec(name=name, factory=factory, config_cls=config_cls, description=description))
    register(ComponentSpec(name="reward_model", factory=_reward_model, config_cls=RewardModelConfig,
                           description="a transformers sequence-classification model's logit for one label"))


def _reward_model(config):
    from anydecode.plugins.hf.rewards import RewardModelReward

    return RewardModelReward(config)
