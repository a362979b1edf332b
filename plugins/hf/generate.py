"""``custom_generate`` entry point: any registered decoder inside ``model.generate``.

    out = model.generate(input_ids, custom_generate=anydecode.plugins.hf.generate, decoder="sample",
                         temperature=0.7, seed=0, max_new_tokens=64)

transformers prepares the inputs, generation config, logits processors and stopping criteria, then calls this
function. Sampling and search settings that are GenerationConfig fields (temperature, top_k, top_p, min_p,
num_beams, num_return_sequences, ...) are read from the prepared config; settings that are not (``seed``,
``drafter``, ``grammar``, ...) are keyword arguments of this function, whose signature lists every field of every
registered decoder (transformers forwards only the keywords a callable declares). ``decoder_config={...}`` takes
any setting too. transformers does not forward ``tokenizer`` to a callable: pass ``anydecode_tokenizer=``.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from anydecode.algorithms.contracts.config import DecoderConfig
from anydecode.algorithms.contracts.decoder import DecodeContext, DecodeResult, Decoder
from anydecode.algorithms.contracts.errors import ConfigError
from anydecode.algorithms.contracts.transform import LogitsTransform, TransformState

from .._common import resolve_decoder
from ._runtime import import_transformers
from .session import HFSession

#: transformers' sampling warpers: anydecode's decoders apply their own, so these are dropped from the list
_WARPERS = ("TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper", "MinPLogitsWarper",
            "TypicalLogitsWarper", "EpsilonLogitsWarper", "EtaLogitsWarper", "TopHLogitsWarper", "LogitNormalization")
#: stopping criteria anydecode handles itself (max_new_tokens and EOS)
_OWN_CRITERIA = ("MaxLengthCriteria", "EosTokenCriteria", "MaxTimeCriteria")
#: GenerationConfig fields a decoder config may share a name with; read from the prepared generation config
_GC_FIELDS = ("temperature", "top_k", "top_p", "min_p", "num_beams", "num_beam_groups", "diversity_penalty",
              "length_penalty", "early_stopping", "num_return_sequences")


def eos_ids_of(generation_config: Any) -> list[int]:
    eos = generation_config.eos_token_id
    if eos is None:
        return []
    return [int(eos)] if isinstance(eos, int) else [int(e) for e in eos]


class ProcessorListTransform(LogitsTransform):
    """Runs a transformers LogitsProcessorList (repetition penalty, bad words, ...) on one row's logits."""

    def __init__(self, processors: Any):
        self.processors = processors

    def start(self, prompt_ids):
        return list(prompt_ids)

    def apply(self, state: TransformState, generated_ids, logits: torch.Tensor) -> torch.Tensor:
        ids = torch.tensor([list(state) + list(generated_ids)], dtype=torch.long, device=logits.device)
        return self.processors(ids, logits.unsqueeze(0)).squeeze(0)


def settings_from_generation_config(decoder: Decoder, generation_config: Any, explicit: Mapping[str, Any]) -> dict:
    """Decoder settings: GenerationConfig fields the decoder shares (when set), then explicit keywords."""
    names = {f.name for f in decoder.config_cls.fields()}
    settings: dict[str, Any] = {}
    do_sample = bool(getattr(generation_config, "do_sample", False))
    for name in _GC_FIELDS:
        if name not in names:
            continue
        value = getattr(generation_config, name, None)
        if value is None:
            continue
        # sampling warpers only count when transformers would sample; a greedy call keeps the decoder's defaults
        if name in ("temperature", "top_k", "top_p", "min_p") and not do_sample and decoder.name != "sample":
            continue
        if name == "top_k" and value is None:
            continue
        settings[name] = value
    settings.update(explicit)
    return settings


def _pad_rows(rows: list[list[int]], pad: int, device: torch.device) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), width), pad, dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        if r:
            out[i, : len(r)] = torch.tensor(r, dtype=torch.long, device=device)
    return out


def run_decoder(model: Any, input_ids: torch.Tensor, decoder: Decoder, config: DecoderConfig, *,
                attention_mask: torch.Tensor | None = None, max_new_tokens: int, eos_token_ids: list[int],
                tokenizer: Any = None, pre_transform: LogitsTransform | None = None,
                on_token: Callable[[int, int], None] | None = None,
                stop_check: Callable[[int, list[int]], bool] | None = None,
                pad_token_id: int | None = None,
                extra: dict[str, Any] | None = None,
                fast_linear: bool | None = None) -> tuple[DecodeResult, HFSession]:
    """Prefill ``input_ids`` in a fresh session and run ``decoder``; the core of every HF entry point."""
    session = HFSession(model, eos_token_ids, fast_linear=fast_linear)
    started = time.perf_counter()
    prompt_logits = session.start(input_ids, attention_mask)
    prefill_seconds = time.perf_counter() - started
    prompts = [session.tokens(b) for b in range(session.batch_size)]
    ctx = DecodeContext(
        vocab_size=session.vocab_size,
        eos_token_ids=frozenset(eos_token_ids),
        tokenizer=tokenizer,
        runtime="hf",
        session=session,
        prompts=prompts,
        prompt_logits=prompt_logits,
        max_new_tokens=max_new_tokens,
        on_token=on_token,
        extra={"model": model, "pre_transform": pre_transform, "stop_check": stop_check, **(extra or {})},
    )
    if pad_token_id is not None:  # what finished beams emit (search decoders); else they use the smallest EOS id
        ctx.extra["pad_token_id"] = int(pad_token_id)
    result = decoder.run(config, ctx)
    result.stats.setdefault("forward_passes", session.forward_passes)
    result.stats["target_forward_passes"] = session.forward_passes
    result.stats["prefill_seconds"] = prefill_seconds
    return result, session


def _output_class() -> Any:
    transformers = import_transformers()
    base = transformers.generation.utils.GenerateDecoderOnlyOutput

    @dataclasses.dataclass
    class AnydecodeGenerateOutput(base):  # type: ignore[misc, valid-type]
        """transformers' decoder-only output plus the decoder's scores, finish reasons and statistics."""

        sequences_scores: torch.Tensor | None = None
        finish_reasons: list[str] | None = None
        anydecode_stats: dict[str, Any] | None = None

    return AnydecodeGenerateOutput


def generate(model: Any, input_ids: torch.Tensor, logits_processor: Any = None, stopping_criteria: Any = None,
             generation_config: Any = None, decoder: str | Decoder = "greedy",
             decoder_config: Mapping[str, Any] | None = None, anydecode_tokenizer: Any = None,
             n: int | None = None, draft_model: Any = None, anydecode_fast_linear: bool | None = None,
             **kwargs: Any) -> Any:
    """Run ``decoder`` as transformers' decoding loop (pass this function as ``custom_generate=``)."""
    model_kwargs = {k: v for k, v in kwargs.items() if k not in _DECODER_KEYWORDS}
    explicit = {k: v for k, v in kwargs.items() if k in _DECODER_KEYWORDS}
    explicit.update(decoder_config or {})
    dec, _ = resolve_decoder(decoder)
    settings = settings_from_generation_config(dec, generation_config, explicit)
    config = dec.configure(settings)

    attention_mask = model_kwargs.get("attention_mask")
    num_beams = int(getattr(generation_config, "num_beams", None) or 1)
    num_return = int(getattr(generation_config, "num_return_sequences", None) or 1)
    expand = max(num_beams, num_return)
    if dec.kind == "loop" and expand > 1:
        # transformers repeated each prompt `expand` times; a search decoder makes its own beams or samples
        input_ids = input_ids[::expand]
        attention_mask = attention_mask[::expand] if attention_mask is not None else None
    prompt_len = input_ids.shape[1]
    max_new = int(generation_config.max_length) - prompt_len
    if max_new < 0:
        raise ConfigError(f"max_length={generation_config.max_length} is shorter than the prompt ({prompt_len})")
    eos = eos_ids_of(generation_config)

    kept = [p for p in (logits_processor or []) if type(p).__name__ not in _WARPERS]
    pre = ProcessorListTransform(import_transformers().LogitsProcessorList(kept)) if kept else None
    user_criteria = [c for c in (stopping_criteria or []) if type(c).__name__ not in _OWN_CRITERIA]
    stop_check = None
    if user_criteria:
        def stop_check(row: int, generated: list[int], _ids=input_ids) -> bool:
            ids = torch.tensor([_ids[row].tolist() + generated], dtype=torch.long, device=_ids.device)
            return any(bool(c(ids, None).reshape(-1)[0]) for c in user_criteria)

    pad = generation_config._pad_token_tensor
    pad_id = int(pad) if pad is not None else (eos[0] if eos else 0)
    repeats = int(n or 1)
    if repeats < 1:
        raise ConfigError(f"n={n} must be >= 1")
    results = []
    for _ in range(repeats):  # n samples one after another, so stateful decoders (ASAp) learn in order
        extra = None
        if draft_model is not None:  # the drafter of drafter="draft_model": its own session on the same prompts
            draft = HFSession(draft_model, eos, fast_linear=anydecode_fast_linear)
            draft.start(input_ids, attention_mask)
            extra = {"draft_session": draft}
        result, _session = run_decoder(
            model, input_ids, dec, config, attention_mask=attention_mask, max_new_tokens=max_new,
            eos_token_ids=eos, tokenizer=anydecode_tokenizer, pre_transform=pre, stop_check=stop_check,
            pad_token_id=pad_id, extra=extra, fast_linear=anydecode_fast_linear,
        )
        results.append(result)

    rows, scores, reasons = [], [], []
    stats: dict[str, Any] = {}
    order = []
    for rep, result in enumerate(results):
        for i, (seq, prow) in enumerate(zip(result.sequences, result.prompt_rows)):
            order.append((prow, rep, i))
            rows.append(input_ids[prow].tolist() + list(seq))
            reasons.append(result.finish_reasons[i])
            scores.append(result.scores[i] if result.scores is not None else None)
        for k, v in result.stats.items():
            stats[k] = stats.get(k, 0) + v if isinstance(v, (int, float)) and not isinstance(v, bool) else v
    ranked = sorted(range(len(rows)), key=lambda j: (order[j][0], order[j][1], order[j][2]))
    sequences = _pad_rows([rows[j] for j in ranked], pad_id, input_ids.device)
    if not getattr(generation_config, "return_dict_in_generate", False):
        return sequences
    have_scores = all(scores[j] is not None for j in ranked)
    return _output_class()(
        sequences=sequences,
        sequences_scores=torch.tensor([scores[j] for j in ranked]) if have_scores else None,
        finish_reasons=[reasons[j] for j in ranked],
        anydecode_stats=stats,
    )


def _decoder_keywords() -> set[str]:
    """Every setting name of every registered decoder that transformers would not route elsewhere."""
    from anydecode.registry import get_registry

    transformers = import_transformers()
    reserved = set(inspect.signature(transformers.GenerationMixin._sample).parameters)
    reserved |= set(transformers.GenerationConfig().to_dict()) | set(_GC_FIELDS)
    names = set()
    for dec in get_registry().decoders().values():
        names |= {f.name for f in dec.config_cls.fields()}
    return names - reserved


_DECODER_KEYWORDS: set[str] = set()


def refresh_signature() -> None:
    """Re-read the registry so ``generate`` declares the settings of decoders registered since import."""
    global _DECODER_KEYWORDS
    _DECODER_KEYWORDS = _decoder_keywords()
    params = [p for p in inspect.signature(generate).parameters.values() if p.kind != p.VAR_KEYWORD]
    params += [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=None) for k in sorted(_DECODER_KEYWORDS)]
    params.append(inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD))
    generate.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
