"""Running a decoder on an opened decode context and shaping what it returns, the same for every runtime."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from .contracts.config import DecoderConfig
from .contracts.errors import ConfigError
from .contracts.decoder import DecodeContext, DecodeResult, Decoder
from .contracts.generation import GeneratedSequence, Generation


def has_setting(decoder: Decoder, name: str) -> bool:
    return name in {f.name for f in decoder.config_cls.fields()}


def repeat_prompts(prompts: Sequence[Sequence[int]], decoder: Decoder, num_return_sequences: int) -> list[list[int]]:
    """The prompts a decoder runs on to return ``num_return_sequences`` per prompt: once each for a decoder that
    returns several itself (beam search, DeAL: its own ``num_return_sequences``), else repeated, one row each."""
    if num_return_sequences < 1:
        from .contracts.errors import ConfigError

        raise ConfigError(f"num_return_sequences={num_return_sequences} must be >= 1")
    if num_return_sequences == 1 or has_setting(decoder, "num_return_sequences"):
        return [list(p) for p in prompts]
    return [list(p) for p in prompts for _ in range(num_return_sequences)]


def run_decoder(decoder: Decoder, config: DecoderConfig, ctx: DecodeContext) -> DecodeResult:
    """``decoder.run`` with the statistics every adapter reports (prefill time, target forward passes)."""
    if ctx.prediction is not None and not decoder.accepts_prediction:
        raise ConfigError(f"decoder {decoder.name!r} does not draft from a prediction (predicted outputs); "
                          "use a speculative decoder with a drafter that does (iad, suffix, or speculative with "
                          "drafter=iad|suffix), or leave prediction out")
    started = time.perf_counter()
    result = decoder.run(config, ctx)
    result.stats.setdefault("decode_seconds", time.perf_counter() - started)
    result.stats["prefill_seconds"] = ctx.prefill_seconds
    passes = getattr(ctx.session, "forward_passes", None)
    if isinstance(passes, int):
        result.stats["target_forward_passes"] = passes
    return result


def generation(result: DecodeResult, decoder: Decoder, runtime: str, prompts: Sequence[Sequence[int]],
               decode: Callable[[list[int]], str], eos: frozenset[int], group: int = 1) -> Generation:
    """A :class:`Generation` from a decoder's result; ``group`` rows of ``prompts`` belong to each user prompt (a
    prompt repeated for ``num_return_sequences``)."""
    sequences = []
    for i, seq in enumerate(result.sequences):
        body = [t for t in seq if t not in eos]
        sequences.append(GeneratedSequence(
            text=decode(body), token_ids=list(seq), finish_reason=result.finish_reasons[i],
            score=result.scores[i] if result.scores is not None else None,
            prompt_index=result.prompt_rows[i] // group))
    sequences.sort(key=lambda s: s.prompt_index)  # stable: best first within a prompt
    unique = [list(p) for p in prompts][::group]
    return Generation(decoder=decoder.name, runtime=runtime, sequences=sequences, stats=dict(result.stats),
                      prompt_token_ids=unique)


def merge_stats(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Sum the numeric counters of several runs (other values: the last run's)."""
    out: dict[str, Any] = {}
    for stats in parts:
        for key, value in stats.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key in out:
                out[key] = out[key] + value
            else:
                out[key] = value
    return out


def generate_on(runtime: Any, handle: Any, prompts: Sequence[Sequence[int]], decoder: Decoder,
                config: DecoderConfig, *, max_new_tokens: int, num_return_sequences: int = 1,
                on_token: Callable[[int, int], None] | None = None,
                prediction: Sequence[int] | None = None) -> Generation:
    """Run ``decoder`` through a registered runtime adapter (``Runtime``) on token-id prompts: the shared path of
    ``anydecode run``, ``bench`` and ``conformance``."""
    runtime.check(decoder, config)
    rows = repeat_prompts(prompts, decoder, num_return_sequences)
    group = len(rows) // max(len(prompts), 1)
    ctx = runtime.open(handle, rows, max_new_tokens=max_new_tokens, on_token=on_token)
    if prediction is not None:
        ctx.prediction = [list(prediction)] * len(rows)
    if ctx.owner is None:
        ctx.owner = runtime.owner(handle)
    try:
        result = run_decoder(decoder, config, ctx)
    finally:
        close = getattr(ctx.session, "close", None)
        if close is not None:
            close()
    tokenizer = runtime.tokenizer(handle)
    return generation(result, decoder, runtime.name, rows,
                      lambda body: tokenizer.decode(body, skip_special_tokens=True), ctx.eos_token_ids, group)
