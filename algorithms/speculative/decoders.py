"""The speculative decoding family as decoders: ``speculative`` (any drafter) and the ``iad``, ``aded``,
``prompt_lookup`` and ``suffix`` shortcuts, with the built-in drafters' factories.

A drafter is a component (``ComponentSpec``: name, config class, factory). A factory is called as
``factory(drafter_config, sampling, ctx)`` and returns a :class:`~.draft.Drafter` for one ``generate`` call; what it
needs from the runtime comes from the decode context's typed fields (the draft model's session, the tokenizer, the
owner that per-model state is keyed on). The ``speculative`` decoder resolves its ``drafter=`` name through the
components handed to its config (the plugin registry), so a third-party drafter works with it unchanged.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Mapping
from typing import Any

from ..contracts.component import ComponentSpec
from ..contracts.config import DecoderConfig, config_field
from ..contracts.decoder import DecodeContext, DecodeResult, Decoder
from ..contracts.errors import ConfigError, unknown_name
from .aded import ADEDConfig, ADEDDrafter, TrigramTable
from .config import SpeculativeSampling, drafter_part, sampling_part, shortcut_config
from .draft_model import DraftModelConfig, DraftModelDrafter
from .iad import IADConfig, IADDrafter
from .oracle import OracleConfig, OracleDrafter
from .prompt_lookup import PromptLookupConfig, PromptLookupDrafter
from .schedule import block_token_share
from .suffix import SuffixConfig, SuffixDrafter
from .suffix_tree import SuffixCorpus

#: per-model state that drafters learn across requests, keyed weakly on ``DecodeContext.owner``
_ADED_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_SUFFIX_CORPORA: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _per_owner(table: weakref.WeakKeyDictionary, owner: object | None, make: Any) -> Any:
    """``table[owner]`` (made on first use); None where there is no owner or it cannot be weakly referenced."""
    if owner is None:
        return None
    try:
        hit = table.get(owner)
        if hit is None:
            hit = table[owner] = make()
        return hit
    except TypeError:
        return None


def _draft_model(config: DraftModelConfig, sampling: Any, ctx: DecodeContext) -> DraftModelDrafter:
    if ctx.draft_session is None:
        raise ConfigError("drafter 'draft_model' needs a draft model: pass draft_model=... to the runtime's generate "
                          "(the adapter opens a session on it holding the same prompts)")
    target_vocab = ctx.vocab_size or getattr(ctx.session, "vocab_size", 0)
    return DraftModelDrafter(config, sampling, ctx.draft_session, target_vocab)


def _prompt_lookup(config: PromptLookupConfig, sampling: Any, ctx: DecodeContext) -> PromptLookupDrafter:
    return PromptLookupDrafter(config)


def _iad(config: IADConfig, sampling: Any, ctx: DecodeContext) -> IADDrafter:
    share = block_token_share(getattr(ctx.session, "forward_cost", None))
    if ctx.prediction is not None:  # predicted outputs: draft the prediction, and only it
        return IADDrafter(dataclasses.replace(config, fallback=False), ctx.tokenizer, block_token_cost=share,
                          sources=[list(p) for p in ctx.prediction])
    return IADDrafter(config, ctx.tokenizer, block_token_cost=share)


def _aded(config: ADEDConfig, sampling: Any, ctx: DecodeContext) -> ADEDDrafter:
    table = _per_owner(_ADED_TABLES, ctx.owner, TrigramTable) if config.persist else None
    return ADEDDrafter(config, table)


def _suffix(config: SuffixConfig, sampling: Any, ctx: DecodeContext) -> SuffixDrafter:
    corpus: SuffixCorpus | None = None
    if config.use_corpus:
        corpora = _per_owner(_SUFFIX_CORPORA, ctx.owner, dict)
        if corpora is not None:  # one corpus per model and corpus bounds
            key = (config.max_depth, config.corpus_max_tokens, config.corpus_max_outputs)
            corpus = corpora.get(key)
            if corpus is None:
                corpus = corpora[key] = config.make_corpus()
    share = block_token_share(getattr(ctx.session, "forward_cost", None))
    drafter = SuffixDrafter(config, corpus, block_token_cost=share)
    if ctx.prediction is not None:
        drafter.extra_sources = [list(p) for p in ctx.prediction]
    return drafter


def _oracle(config: OracleConfig, sampling: Any, ctx: DecodeContext) -> OracleDrafter:
    return OracleDrafter(config)


#: the built-in drafters (the built-in plugin registers these)
BUILTIN_DRAFTERS: dict[str, ComponentSpec] = {spec.name: spec for spec in (
    ComponentSpec("draft_model", _draft_model, DraftModelConfig,
                  "a smaller model with the same vocabulary drafts autoregressively"),
    ComponentSpec("prompt_lookup", _prompt_lookup, PromptLookupConfig,
                  "drafts what followed the last n-gram earlier in the context"),
    ComponentSpec("iad", _iad, IADConfig,
                  "Input-guided Aggressive Decoding: copies the input span from the aligned position",
                  accepts_prediction=True),
    ComponentSpec("aded", _aded, ADEDConfig, "ADED: tri-gram table learnt online, draft trees grown with PUCT"),
    ComponentSpec("suffix", _suffix, SuffixConfig,
                  "SuffixDecoding: the most frequent continuation in a suffix tree of the prompt, the output and "
                  "earlier outputs", accepts_prediction=True),
    ComponentSpec("oracle", _oracle, OracleConfig,
                  "benchmarks only: drafts a recorded continuation (perfect drafts measure the limit)"),
)}


def drafter_spec(name: str, components: Any = None) -> ComponentSpec:
    """The drafter ``name``: through ``components`` (the registry) or among the built-ins."""
    if components is not None:
        return components.get("drafter", name)
    if name not in BUILTIN_DRAFTERS:
        raise unknown_name("drafter", name, BUILTIN_DRAFTERS)
    return BUILTIN_DRAFTERS[name]


@dataclasses.dataclass(frozen=True)
class SpeculativeConfig(SpeculativeSampling):
    """Settings of the ``speculative`` decoder: sampling (greedy by default), the drafter and its settings.

    Settings that are not sampling ones go to the drafter: ``drafter="prompt_lookup", max_ngram=2``.
    """

    drafter: str = config_field("prompt_lookup", help="registered drafter (anydecode decoders lists them)")
    #: the drafter's validated settings as (name, value) pairs; give them as plain keyword settings
    drafter_settings: tuple = config_field((), help="the drafter's settings as (name, value) pairs")

    @classmethod
    def _build(cls, values: Mapping[str, Any] | None = None, *, from_strings: bool = False,  # type: ignore[override]
               name: str | None = None, components: Any = None) -> SpeculativeConfig:
        values = dict(values or {})
        own = {f.name for f in cls.fields()}
        spec = drafter_spec(str(values.get("drafter", "prompt_lookup")), components)
        given = dict(values.pop("drafter_settings", ()) or ())
        given.update({k: values.pop(k) for k in list(values) if k not in own})
        try:
            drafter_config = spec.configure(given, from_strings=from_strings)
        except ConfigError as exc:
            raise ConfigError(f"{exc}; the speculative decoder itself accepts: {cls.fields_summary()}") from None
        values["drafter_settings"] = tuple(sorted(drafter_config.as_dict().items())) if drafter_config else ()
        return super()._build(values, from_strings=from_strings, name=name)

    @classmethod
    def setting_fields(cls, values: Mapping[str, Any] | None = None,
                       components: Any = None) -> dict[str, dataclasses.Field]:
        fields = super().setting_fields(values, components)
        try:
            spec = drafter_spec(str((values or {}).get("drafter", "prompt_lookup")), components)
        except ConfigError:
            return fields
        if spec.config_cls is not None:
            for f in spec.config_cls.fields():
                fields.setdefault(f.name, f)
        return fields

    def drafter_config(self) -> DecoderConfig | None:
        return drafter_spec(self.drafter, self.components).configure(dict(self.drafter_settings))


def run_with_drafter(config: DecoderConfig, ctx: DecodeContext, spec: ComponentSpec,
                     drafter_config: DecoderConfig | None) -> DecodeResult:
    """Speculative decoding with the drafter ``spec`` builds (the user's sampling settings verify it)."""
    from .decode import speculative_decode

    if ctx.prediction is not None and not spec.accepts_prediction:
        raise ConfigError(f"drafter {spec.name!r} does not draft from a prediction (predicted outputs); drafters "
                          "that do: iad, suffix")
    sampling = sampling_part(config)
    drafter = spec.factory(drafter_config, sampling, ctx)
    try:
        result = speculative_decode(ctx, drafter, sampling, cost_aware=bool(getattr(config, "cost_aware", True)))
    finally:
        finish = getattr(drafter, "finish", None)
        if finish is not None:
            finish()
    if ctx.prediction is not None:  # OpenAI's usage fields of predicted outputs
        result.stats["accepted_prediction_tokens"] = int(result.stats.get("accepted", 0))
        result.stats["rejected_prediction_tokens"] = int(result.stats.get("drafted", 0)) - int(
            result.stats.get("accepted", 0))
    return result


def drafter_factory_of(decoder: Decoder, config: DecoderConfig, ctx: DecodeContext) -> tuple[Any, Any]:
    """The drafter a speculative decoder with ``config`` would run on ``ctx``, and its sampling settings (the
    conformance suite drives the loop itself with enumerating coins)."""
    if isinstance(config, SpeculativeConfig):
        spec, drafter_config = drafter_spec(config.drafter, config.components), config.drafter_config()
    else:
        spec = drafter_spec(decoder.name, config.components)
        assert spec.config_cls is not None
        drafter_config = drafter_part(config, spec.config_cls)
    sampling = sampling_part(config)
    return spec.factory(drafter_config, sampling, ctx), sampling


def _run_speculative(config: SpeculativeConfig, ctx: DecodeContext) -> DecodeResult:
    return run_with_drafter(config, ctx, drafter_spec(config.drafter, config.components), config.drafter_config())


SPECULATIVE_CLAIM = ("greedy: identical to the target's greedy decoding; sampling: distributed as ancestral sampling "
                     "from the warped target (chain and tree verification)")


def shortcut(name: str, drafter_cls: type[DecoderConfig], description: str) -> Decoder:
    """A decoder running one drafter (``iad``): its config holds the sampling settings and the drafter's."""
    config_cls = shortcut_config(name, drafter_cls)

    def run(config: DecoderConfig, ctx: DecodeContext) -> DecodeResult:
        return run_with_drafter(config, ctx, drafter_spec(name, config.components), drafter_part(config, drafter_cls))

    return Decoder(name=name, config_cls=config_cls, kind="loop", description=description, run_fn=run,
                   claim="lossless", claim_note=SPECULATIVE_CLAIM, accepts_prediction=True)


SPECULATIVE = Decoder(
    name="speculative", config_cls=SpeculativeConfig, kind="loop",
    description="speculative decoding with any registered drafter; lossless chain/tree verification",
    run_fn=_run_speculative, claim="lossless", claim_note=SPECULATIVE_CLAIM, accepts_prediction=True,
)
IAD = shortcut("iad", IADConfig, "Input-guided Aggressive Decoding: speculative copying of the input (editing, "
                                 "grammar correction); greedy by default, identical to greedy")
ADED = shortcut("aded", ADEDConfig, "ADED: speculative decoding with tri-gram draft trees learnt online")
PROMPT_LOOKUP = shortcut("prompt_lookup", PromptLookupConfig, "speculative decoding with prompt-lookup n-gram drafts")
SUFFIX = shortcut("suffix", SuffixConfig, "SuffixDecoding: speculative decoding with suffix-tree drafts of the "
                                          "prompt, the output and earlier outputs")
DECODERS = (SPECULATIVE, IAD, ADED, PROMPT_LOOKUP, SUFFIX)
