"""Built-in plugin: the speculative decoding family.

Drafters ``draft_model``, ``prompt_lookup``, ``iad`` and ``aded``; decoders ``speculative`` (any registered
drafter, chosen with ``drafter=``, its settings beside the sampling ones) and the shortcuts ``iad``, ``aded`` and
``prompt_lookup``.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Mapping
from typing import Any

from anydecode.algorithms.contracts.config import DecoderConfig, config_field
from anydecode.algorithms.contracts.decoder import DecodeContext, Decoder, DecodeResult
from anydecode.algorithms.contracts.errors import ConfigError
from anydecode.algorithms.speculative.config import (
    SpeculativeSampling,
    drafter_part,
    sampling_part,
    shortcut_config,
)
from anydecode.hookspecs import hookimpl
from anydecode.registry import ComponentSpec


def _draft_model(config: Any, sampling: Any, ctx: DecodeContext) -> Any:
    from anydecode.algorithms.speculative.draft_model import DraftModelDrafter

    session = ctx.extra.get("draft_session")
    if session is None:
        raise ConfigError(
            "drafter 'draft_model' needs a draft model: pass draft_model=... to the runtime's generate "
            "(the adapter puts its session, holding the same prompts, in DecodeContext.extra['draft_session'])"
        )
    target_vocab = ctx.vocab_size or getattr(ctx.session, "vocab_size", 0)
    return DraftModelDrafter(config, sampling, session, target_vocab)


def _prompt_lookup(config: Any, sampling: Any, ctx: DecodeContext) -> Any:
    from anydecode.algorithms.speculative.prompt_lookup import PromptLookupDrafter

    return PromptLookupDrafter(config)


def _iad(config: Any, sampling: Any, ctx: DecodeContext) -> Any:
    from anydecode.algorithms.speculative.iad import IADDrafter
    from anydecode.algorithms.speculative.schedule import block_token_share

    share = block_token_share(getattr(ctx.session, "forward_cost", None))
    return IADDrafter(config, ctx.tokenizer, block_token_cost=share)


#: ADED's tri-gram tables, one per model, so that what the model produced in earlier requests drafts later ones
_ADED_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _aded(config: Any, sampling: Any, ctx: DecodeContext) -> Any:
    from anydecode.algorithms.speculative.aded import ADEDDrafter, TrigramTable

    model = ctx.extra.get("model") or ctx.extra.get("llama")
    table = None
    if config.persist and model is not None:
        try:
            table = _ADED_TABLES.setdefault(model, TrigramTable())
        except TypeError:  # a model that cannot be weakly referenced: a table per request
            table = None
    return ADEDDrafter(config, table)


def _drafter_specs() -> list[ComponentSpec]:
    from anydecode.algorithms.speculative.aded import ADEDConfig
    from anydecode.algorithms.speculative.draft_model import DraftModelConfig
    from anydecode.algorithms.speculative.iad import IADConfig
    from anydecode.algorithms.speculative.prompt_lookup import PromptLookupConfig

    return [
        ComponentSpec("draft_model", _draft_model, DraftModelConfig,
                      "a smaller model with the same vocabulary drafts autoregressively"),
        ComponentSpec("prompt_lookup", _prompt_lookup, PromptLookupConfig,
                      "drafts what followed the last n-gram earlier in the context"),
        ComponentSpec("iad", _iad, IADConfig,
                      "Input-guided Aggressive Decoding: copies the input span from the aligned position"),
        ComponentSpec("aded", _aded, ADEDConfig,
                      "ADED: tri-gram table learnt online, draft trees grown with PUCT"),
    ]


@hookimpl
def anydecode_register_drafters(register):
    for spec in _drafter_specs():
        register(spec)


def _drafter_spec(name: str) -> ComponentSpec:
    from anydecode.registry import get_registry

    return get_registry().get("drafter", name)


@dataclasses.dataclass(frozen=True)
class SpeculativeConfig(SpeculativeSampling):
    """Settings of the ``speculative`` decoder: sampling (greedy by default), the drafter and its settings.

    Settings that are not sampling ones go to the drafter: ``drafter="prompt_lookup", max_ngram=2``.
    """

    drafter: str = config_field("prompt_lookup", help="registered drafter (anydecode decoders lists them)")
    #: the drafter's validated settings as (name, value) pairs; give them as plain keyword settings
    drafter_settings: tuple = config_field((), help="the drafter's settings as (name, value) pairs")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None = None, *, from_strings: bool = False,
                     name: str | None = None) -> SpeculativeConfig:
        values = dict(values or {})
        own = {f.name for f in cls.fields()}
        drafter_name = str(values.get("drafter", "prompt_lookup"))
        spec = _drafter_spec(drafter_name)
        given = dict(values.pop("drafter_settings", ()) or ())
        given.update({k: values.pop(k) for k in list(values) if k not in own})
        try:
            drafter_config = spec.configure(given, from_strings=from_strings)
        except ConfigError as exc:
            raise ConfigError(f"{exc}; the speculative decoder itself accepts: {cls.fields_summary()}") from None
        values["drafter_settings"] = tuple(sorted(drafter_config.as_dict().items())) if drafter_config else ()
        return super().from_mapping(values, from_strings=from_strings, name=name)


def _run(config: DecoderConfig, ctx: DecodeContext, drafter_name: str, drafter_config: DecoderConfig) -> DecodeResult:
    from anydecode.algorithms.speculative.decode import speculative_decode

    sampling = sampling_part(config)
    drafter = _drafter_spec(drafter_name).factory(drafter_config, sampling, ctx)
    return speculative_decode(ctx, drafter, sampling, cost_aware=bool(getattr(config, "cost_aware", True)))


def _run_speculative(config: SpeculativeConfig, ctx: DecodeContext) -> DecodeResult:
    spec = _drafter_spec(config.drafter)
    drafter_config = spec.configure(dict(config.drafter_settings))
    return _run(config, ctx, config.drafter, drafter_config)


def _shortcut(name: str, drafter_cls: type[DecoderConfig], description: str) -> Decoder:
    config_cls = shortcut_config(name, drafter_cls)

    def run(config: DecoderConfig, ctx: DecodeContext) -> DecodeResult:
        return _run(config, ctx, name, drafter_part(config, drafter_cls))

    return Decoder(name=name, config_cls=config_cls, kind="loop", description=description, run_fn=run)


@hookimpl
def anydecode_register_decoders(register):
    from anydecode.algorithms.speculative.aded import ADEDConfig
    from anydecode.algorithms.speculative.iad import IADConfig
    from anydecode.algorithms.speculative.prompt_lookup import PromptLookupConfig

    register(Decoder(
        name="speculative",
        config_cls=SpeculativeConfig,
        kind="loop",
        description="speculative decoding with any registered drafter; lossless chain/tree verification",
        run_fn=_run_speculative,
    ))
    register(_shortcut("iad", IADConfig, "Input-guided Aggressive Decoding: speculative copying of the input "
                                         "(editing, grammar correction); greedy by default, identical to greedy"))
    register(_shortcut("aded", ADEDConfig, "ADED: speculative decoding with tri-gram draft trees learnt online"))
    register(_shortcut("prompt_lookup", PromptLookupConfig, "speculative decoding with prompt-lookup n-gram drafts"))
