"""The autoregressive loop every transform decoder runs in, written once for all runtimes.

Per step: apply the runtime's own processors to the active rows' logits, then the decoder's transform row by row,
stop rows the transform dead-ends, choose the next tokens for the whole batch in one call, append them to the
session in one forward pass, and stop rows that emitted EOS or that a stopping rule ends. Every row's transform is
finished exactly once, also when the session runs out of room (``finish_reason="length"``) or something raises.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .contracts.config import DecoderConfig, SamplingConfig
from .contracts.decoder import DecodeContext, DecodeResult, Decoder, TransformContext
from .contracts.errors import ConfigError, ContextFull
from .contracts.transform import IdentityTransform, LogitsTransform
from .sampling.select import TokenSelector


def selector_for(config: DecoderConfig) -> TokenSelector:
    """Greedy unless the config carries sampling settings with a temperature above 0."""
    if isinstance(config, SamplingConfig) and not config.greedy:
        return TokenSelector(greedy=False, seed=config.seed)
    return TokenSelector(greedy=True)


def run_transform_decoder(decoder: Decoder, config: DecoderConfig, ctx: DecodeContext) -> DecodeResult:
    """Run a transform decoder on ``ctx.session`` (which holds the prompts; ``ctx.prompt_logits`` follow them)."""
    return autoregressive(ctx, decoder.transform(config, ctx), selector_for(config))


def transform_decoder(name: str, config_cls: type[DecoderConfig],
                      make_transform: Callable[[Any, TransformContext], LogitsTransform], description: str = "",
                      **fields: Any) -> Decoder:
    """A transform decoder that runs in the shared loop (its ``run_fn`` is :func:`run_transform_decoder`)."""
    decoder = Decoder(name=name, config_cls=config_cls, kind="transform", description=description,
                      make_transform=make_transform, **fields)
    return with_loop(decoder)


def with_loop(decoder: Decoder) -> Decoder:
    """``decoder`` with the shared loop as its run function (transform decoders registered without one)."""
    if decoder.run_fn is not None or decoder.kind != "transform" or decoder.make_transform is None:
        return decoder
    make = decoder.make_transform

    def run(config: DecoderConfig, ctx: DecodeContext) -> DecodeResult:
        return autoregressive(ctx, make(config, ctx), selector_for(config))

    return dataclasses.replace(decoder, run_fn=run)


def processed(ctx: DecodeContext, prompt_rows: Sequence[int], generated: Sequence[Sequence[int]],
              logits: torch.Tensor) -> torch.Tensor:
    """``logits`` after the runtime's own processors (unchanged when it has none)."""
    if ctx.processors is None or len(prompt_rows) == 0:
        return logits
    return ctx.processors(prompt_rows, generated, logits)


def stops(ctx: DecodeContext, prompt_row: int, generated: Sequence[int]) -> bool:
    """Whether the runtime's stopping rules end a row after ``generated``."""
    return ctx.stopping is not None and bool(ctx.stopping(prompt_row, generated))


def autoregressive(ctx: DecodeContext, transform: LogitsTransform, selector: TokenSelector,
                   prompt_rows: Sequence[int] | None = None) -> DecodeResult:
    """Decode every row of ``ctx.session``; ``prompt_rows[b]`` is the prompt row ``b`` continues (the runtime's
    processors and stopping rules are per prompt; default: row ``b`` continues prompt ``b``)."""
    session = ctx.session
    if session is None or ctx.prompt_logits is None:
        raise ConfigError("the autoregressive loop needs a model session and the logits after the prompt")
    if ctx.max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens={ctx.max_new_tokens} must be >= 0")
    batch = session.batch_size
    owners = list(prompt_rows) if prompt_rows is not None else list(range(batch))
    eos = ctx.eos_token_ids
    identity = isinstance(transform, IdentityTransform)
    states: list[Any] = []
    generated: list[list[int]] = [[] for _ in range(batch)]
    reasons: list[str | None] = [None] * batch
    logits = ctx.prompt_logits
    forwards = 0
    pad = ctx.pad
    started = time.perf_counter()
    try:
        for b in range(batch):
            states.append(transform.start(list(ctx.prompts[b])))
        for _step in range(ctx.max_new_tokens):
            active = [b for b in range(batch) if reasons[b] is None]
            if ctx.processors is not None:
                rows = torch.tensor(active, dtype=torch.long)
                logits = logits.clone()
                logits[rows] = processed(ctx, [owners[b] for b in active], [generated[b] for b in active],
                                         logits[rows])
            if not identity:
                out = []
                for b in range(batch):
                    if reasons[b] is not None:
                        out.append(logits[b])
                        continue
                    row = transform.apply(states[b], generated[b], logits[b])
                    if not bool(torch.isfinite(row).any()):
                        reasons[b] = transform.forced_stop(states[b]) or "dead_end"
                    out.append(row)
                logits = torch.stack(out)
                if all(r is not None for r in reasons):
                    break
            chosen = selector(logits).tolist()
            for b in range(batch):
                if reasons[b] is not None:
                    chosen[b] = pad
                    continue
                token = chosen[b]
                generated[b].append(token)
                if ctx.on_token is not None:
                    ctx.on_token(b, token)
                if token in eos or stops(ctx, owners[b], generated[b]):
                    reasons[b] = "stop"
            if all(r is not None for r in reasons) or _step == ctx.max_new_tokens - 1:
                break
            try:
                logits = session.step(chosen)
            except ContextFull:
                break  # the rows still running end with "length"
            forwards += 1
    except BaseException:
        _finish(transform, states, generated, ["abort"] * batch)
        raise
    final = [r if r is not None else "length" for r in reasons]
    _finish(transform, states, generated, final)
    stats: dict[str, Any] = {
        "new_tokens": sum(len(g) for g in generated),
        "forward_passes": forwards,
        "decode_seconds": time.perf_counter() - started,
    }
    return DecodeResult(sequences=generated, prompt_rows=owners, finish_reasons=final, stats=stats)


def _finish(transform: LogitsTransform, states: list[Any], generated: list[list[int]], reasons: list[str]) -> None:
    for b, state in enumerate(states):
        transform.finish(state, generated[b], reasons[b])


__all__ = ["autoregressive", "processed", "run_transform_decoder", "selector_for", "stops", "transform_decoder",
           "with_loop"]
