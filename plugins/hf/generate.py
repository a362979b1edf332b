"""``custom_generate`` entry point: any registered decoder inside ``model.generate``.

    out = model.generate(input_ids, custom_generate=anydecode.plugins.hf.generate, decoder="sample",
                         temperature=0.7, seed=0, max_new_tokens=64)

transformers prepares the inputs, generation config, logits processors and stopping criteria, then calls this
function. Every setting a transformers user passes is honoured or refused with an error naming it:

* sampling and search settings that are GenerationConfig fields (temperature, top_k, top_p, min_p, num_beams,
  num_return_sequences, ...) are read from the prepared config by decoders that have them; a warper the decoder
  cannot apply (``typical_p``, ``epsilon_cutoff``, ``eta_cutoff``, ``top_h``, or sampling settings given to a
  decoder that does not sample) is an error, not a no-op;
* transformers' own processors (repetition penalty, bad words, ``min_new_tokens``, ...) and stopping criteria
  (stop strings, custom ones) are applied by every decoder, on the ids transformers would give them (left padding
  included);
* ``num_return_sequences`` works for every decoder: decoders that return several sequences themselves (beam
  search, DeAL) get it as a setting, the others run each prompt that many times side by side.

Settings that are not GenerationConfig fields (``seed``, ``drafter``, ``grammar``, ...) are keyword arguments of
this function, whose signature lists every field of every registered decoder (transformers forwards only the
keywords a callable declares). ``decoder_config={...}`` takes any setting too. transformers does not forward
``tokenizer`` to a callable: pass ``anydecode_tokenizer=``.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from anydecode.algorithms.contracts.config import DecoderConfig
from anydecode.algorithms.contracts.decoder import DecodeContext, Decoder
from anydecode.algorithms.contracts.errors import ConfigError
from anydecode.algorithms.generation import generation, has_setting, merge_stats, run_decoder

from .._common import resolve_decoder
from ._runtime import import_transformers
from .rules import HFProcessors, HFStopping
from .session import HFSession
from .tokenizer import tokenizer_view

#: transformers' sampling warpers, and the decoder setting each needs to be applied by anydecode
_WARPERS = {"TemperatureLogitsWarper": "temperature", "TopKLogitsWarper": "top_k", "TopPLogitsWarper": "top_p",
            "MinPLogitsWarper": "min_p", "TypicalLogitsWarper": "typical_p", "EpsilonLogitsWarper": "epsilon_cutoff",
            "EtaLogitsWarper": "eta_cutoff", "TopHLogitsWarper": "top_h"}
#: normalising the scores changes nothing anydecode's decoders choose (they normalise themselves)
_NEUTRAL = ("LogitNormalization",)
#: stopping criteria anydecode handles itself (the length limit and EOS)
_OWN_CRITERIA = ("MaxLengthCriteria", "EosTokenCriteria")
#: GenerationConfig fields a decoder config may share a name with; read from the prepared generation config
_GC_FIELDS = ("temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff", "top_h",
              "num_beams", "num_beam_groups", "diversity_penalty", "length_penalty", "early_stopping",
              "num_return_sequences")
_SAMPLING_FIELDS = ("temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff", "top_h")


def eos_ids_of(generation_config: Any) -> list[int]:
    eos = generation_config.eos_token_id
    if eos is None:
        return []
    return [int(eos)] if isinstance(eos, int) else [int(e) for e in eos]


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
        if name in _SAMPLING_FIELDS and not do_sample and decoder.name != "sample":
            continue
        settings[name] = value
    settings.update(explicit)
    return settings


def check_settings(decoder: Decoder, generation_config: Any, logits_processor: Any) -> None:
    """ConfigError for a transformers setting the decoder would otherwise ignore."""
    for processor in logits_processor or []:
        setting = _WARPERS.get(type(processor).__name__)
        if setting is not None and not has_setting(decoder, setting):
            value = getattr(generation_config, setting, None)
            raise ConfigError(
                f"decoder {decoder.name!r} cannot apply {setting}={value!r} (transformers' "
                f"{type(processor).__name__}): drop it or do_sample, or choose a decoder that has it; "
                f"{decoder.name} accepts: {decoder.config_cls.fields_summary()}")
    num_beams = int(getattr(generation_config, "num_beams", None) or 1)
    if num_beams > 1 and not has_setting(decoder, "num_beams"):
        raise ConfigError(f"num_beams={num_beams}: decoder {decoder.name!r} does not search beams; use decoder='beam' "
                          "or 'dbs', or drop num_beams")


def open_context(model: Any, input_ids: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
                 max_new_tokens: int, eos_token_ids: list[int], tokenizer: Any = None,
                 processors: Any = None, stopping: Any = None, pad_token_id: int | None = None,
                 on_token: Callable[[int, int], None] | None = None, draft_model: Any = None,
                 fast_linear: bool | None = None) -> DecodeContext:
    """Prefill ``input_ids`` in fresh sessions (the target's and a draft model's) and give the decode context."""
    session = HFSession(model, eos_token_ids, fast_linear=fast_linear)
    started = time.perf_counter()
    prompt_logits = session.start(input_ids, attention_mask)
    prefill_seconds = time.perf_counter() - started
    draft = None
    if draft_model is not None:  # the drafter of drafter="draft_model": its own session on the same prompts
        draft = HFSession(draft_model, eos_token_ids, fast_linear=fast_linear)
        draft.start(input_ids, attention_mask)
    room = session.capacity - session.length if session.capacity is not None else max_new_tokens
    return DecodeContext(
        vocab_size=session.vocab_size,
        eos_token_ids=frozenset(eos_token_ids),
        tokenizer=tokenizer_view(tokenizer, session.vocab_size),
        runtime="hf",
        session=session,
        prompts=[session.tokens(b) for b in range(session.batch_size)],
        prompt_logits=prompt_logits,
        max_new_tokens=max(0, min(max_new_tokens, room)),
        on_token=on_token,
        processors=processors,
        stopping=stopping,
        pad_token_id=pad_token_id,
        owner=model,
        draft_session=draft,
        prefill_seconds=prefill_seconds,
    )


def prediction_rows(prediction: Any, tokenizer: Any, rows: int) -> list[list[int]]:
    """A ``prediction`` as token ids per row: text or ids for every row, or a list with one per row."""
    def ids(item: Any) -> list[int]:
        if isinstance(item, str):
            if tokenizer is None:
                raise ConfigError("prediction text needs the tokenizer: pass anydecode_tokenizer=tokenizer, or the "
                                  "prediction as token ids")
            return tokenizer.encode(item)
        try:
            return [int(t) for t in item]
        except (TypeError, ValueError):
            raise ConfigError(f"prediction must be text or token ids, got {type(item).__name__}") from None

    if isinstance(prediction, (list, tuple)) and prediction and isinstance(prediction[0], (str, list, tuple)):
        if len(prediction) != rows:
            raise ConfigError(f"{len(prediction)} predictions for {rows} prompt rows: give one, or one per row")
        return [ids(p) for p in prediction]
    return [ids(prediction)] * rows


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


def _pad_rows(rows: list[list[int]], pad: int, device: torch.device) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), width), pad, dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        if r:
            out[i, : len(r)] = torch.tensor(r, dtype=torch.long, device=device)
    return out


def _generate(model: Any, input_ids: torch.Tensor, logits_processor: Any = None, stopping_criteria: Any = None,
              generation_config: Any = None, decoder: str | Decoder = "greedy",
              decoder_config: Mapping[str, Any] | None = None, anydecode_tokenizer: Any = None,
              n: int | None = None, draft_model: Any = None, anydecode_fast_linear: bool | None = None,
              prediction: Any = None, **kwargs: Any) -> Any:
    """Run ``decoder`` as transformers' decoding loop (``generate`` below is what users pass).

    ``prediction`` (OpenAI's predicted outputs): the text (needs ``anydecode_tokenizer``) or token ids the output is
    expected to largely repeat, or one of them per prompt; speculative decoders that can (``iad``, ``suffix``)
    draft from it, and the statistics give ``accepted_prediction_tokens`` and ``rejected_prediction_tokens`` (draft
    tokens verified and rejected: with ``suffix``'s tree drafts, the default here, side branches count too).
    """
    keywords = decoder_keywords()
    model_kwargs = {k: v for k, v in kwargs.items() if k not in keywords}
    explicit = {k: v for k, v in kwargs.items() if k in keywords and v is not None}
    explicit.update(decoder_config or {})
    dec, _ = resolve_decoder(decoder)
    check_settings(dec, generation_config, logits_processor)
    config: DecoderConfig = dec.configure(settings_from_generation_config(dec, generation_config, explicit))

    attention_mask = model_kwargs.get("attention_mask")
    num_beams = int(getattr(generation_config, "num_beams", None) or 1)
    num_return = int(getattr(generation_config, "num_return_sequences", None) or 1)
    expand = max(num_beams, num_return)
    own_sequences = has_setting(dec, "num_return_sequences") or has_setting(dec, "num_beams")
    if expand > 1 and own_sequences:
        # transformers repeated each prompt `expand` times; this decoder makes its own beams or sequences
        input_ids = input_ids[::expand]
        attention_mask = attention_mask[::expand] if attention_mask is not None else None
    # otherwise each of transformers' repeated rows is decoded on its own: num_return_sequences for every decoder
    group = expand if expand > 1 and not own_sequences else 1
    prompt_len = input_ids.shape[1]
    max_new = int(generation_config.max_length) - prompt_len
    if max_new < 0:
        raise ConfigError(f"max_length={generation_config.max_length} is shorter than the prompt ({prompt_len})")
    eos = eos_ids_of(generation_config)

    transformers = import_transformers()
    kept = [p for p in (logits_processor or [])
            if type(p).__name__ not in _WARPERS and type(p).__name__ not in _NEUTRAL]
    processors = HFProcessors(transformers.LogitsProcessorList(kept), input_ids) if kept else None
    criteria = [c for c in (stopping_criteria or []) if type(c).__name__ not in _OWN_CRITERIA]
    stopping = HFStopping(criteria, input_ids) if criteria else None
    pad = generation_config._pad_token_tensor
    pad_id = int(pad) if pad is not None else (eos[0] if eos else 0)
    repeats = int(n or 1)
    if repeats < 1:
        raise ConfigError(f"n={n} must be >= 1")
    runs = []
    for _ in range(repeats):  # n samples one after another, so stateful decoders (ASAp) learn in order
        ctx = open_context(model, input_ids, attention_mask=attention_mask, max_new_tokens=max_new,
                           eos_token_ids=eos, tokenizer=anydecode_tokenizer, processors=processors,
                           stopping=stopping, pad_token_id=pad_id, draft_model=draft_model,
                           fast_linear=anydecode_fast_linear)
        if prediction is not None:
            ctx.prediction = prediction_rows(prediction, ctx.tokenizer, input_ids.shape[0])
        result = run_decoder(dec, config, ctx)
        runs.append(generation(result, dec, "hf", ctx.prompts, lambda ids: "", frozenset(eos), group))
    rows, scores, reasons = [], [], []
    order = []
    for rep, gen in enumerate(runs):
        for i, seq in enumerate(gen.sequences):
            order.append((seq.prompt_index, rep, i))
            rows.append(input_ids[seq.prompt_index * group].tolist() + list(seq.token_ids))
            reasons.append(seq.finish_reason)
            scores.append(seq.score)
    ranked = sorted(range(len(rows)), key=lambda j: order[j])
    sequences = _pad_rows([rows[j] for j in ranked], pad_id, input_ids.device)
    if not getattr(generation_config, "return_dict_in_generate", False):
        return sequences
    have_scores = all(scores[j] is not None for j in ranked)
    return _output_class()(
        sequences=sequences,
        sequences_scores=torch.tensor([scores[j] for j in ranked]) if have_scores else None,
        finish_reasons=[reasons[j] for j in ranked],
        anydecode_stats=merge_stats([g.stats for g in runs]),
    )


_keywords: set[str] | None = None


def decoder_keywords() -> set[str]:
    """Every setting name of every registered decoder that transformers would not route elsewhere (read from the
    registry on first use, and again after :func:`refresh_signature`)."""
    global _keywords
    if _keywords is None:
        from anydecode.registry import get_registry

        transformers = import_transformers()
        reserved = set(inspect.signature(transformers.GenerationMixin._sample).parameters)
        reserved |= set(transformers.GenerationConfig().to_dict()) | set(_GC_FIELDS)
        names: set[str] = set()
        for dec in get_registry().decoders().values():
            names |= set(dec.config_cls.setting_fields())
        _keywords = names - reserved
    return _keywords


def refresh_signature() -> None:
    """Re-read the registry so ``generate`` declares the settings of decoders registered since the last read."""
    global _keywords
    _keywords = None


class _CustomGenerate:
    """``generate``: a function whose signature lists every registered decoder's settings, computed when
    transformers first reads it (transformers forwards to a ``custom_generate`` callable only the keywords its
    signature declares)."""

    __name__ = "generate"
    __qualname__ = "generate"
    __module__ = __name__
    __doc__ = _generate.__doc__.replace("(``generate`` below is what users pass)", "(pass it as ``custom_generate=``)")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _generate(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        params = [p for p in inspect.signature(_generate).parameters.values() if p.kind != p.VAR_KEYWORD]
        params += [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=None)
                   for k in sorted(decoder_keywords())]
        params.append(inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD))
        return inspect.Signature(params)


generate = _CustomGenerate()
