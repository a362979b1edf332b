"""The autoregressive loop every transform decoder runs in, written once for all runtimes.

Per step: transform each active row's logits, stop rows the transform dead-ends, choose the next tokens for the
whole batch in one call, append them to the session in one forward pass, and stop rows that emitted EOS.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from .contracts.config import DecoderConfig, SamplingConfig
from .contracts.decoder import DecodeContext, DecodeResult, Decoder
from .contracts.errors import ConfigError
from .contracts.transform import ChainTransform, IdentityTransform, LogitsTransform
from .sampling.select import TokenSelector


def selector_for(config: DecoderConfig) -> TokenSelector:
    """Greedy unless the config carries sampling settings with a temperature above 0."""
    if isinstance(config, SamplingConfig) and not config.greedy:
        return TokenSelector(greedy=False, seed=config.seed)
    return TokenSelector(greedy=True)


def run_transform_decoder(decoder: Decoder, config: DecoderConfig, ctx: DecodeContext) -> DecodeResult:
    """Run a transform decoder on ``ctx.session`` (which holds the prompts; ``ctx.prompt_logits`` follow them)."""
    transform = decoder.transform(config, ctx)
    pre = ctx.extra.get("pre_transform")
    if pre is not None:  # the runtime's own processors (repetition penalty, ...) come first
        transform = ChainTransform([pre, transform])
    return autoregressive(ctx, transform, selector_for(config))


def autoregressive(ctx: DecodeContext, transform: LogitsTransform, selector: TokenSelector) -> DecodeResult:
    session = ctx.session
    if session is None or ctx.prompt_logits is None:
        raise ConfigError("the autoregressive loop needs a model session and the logits after the prompt")
    if ctx.max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens={ctx.max_new_tokens} must be >= 0")
    batch = session.batch_size
    eos = ctx.eos_token_ids
    identity = isinstance(transform, IdentityTransform)
    stop_check = ctx.extra.get("stop_check")
    states = [transform.start(list(p)) for p in ctx.prompts]
    generated: list[list[int]] = [[] for _ in range(batch)]
    reasons: list[str | None] = [None] * batch
    logits = ctx.prompt_logits
    forwards = 0
    pad = min(eos) if eos else 0
    started = time.perf_counter()

    for _step in range(ctx.max_new_tokens):
        if not identity:
            rows = []
            for b in range(batch):
                if reasons[b] is not None:
                    rows.append(logits[b])
                    continue
                row = transform.apply(states[b], generated[b], logits[b])
                if not bool(torch.isfinite(row).any()):
                    reasons[b] = transform.forced_stop(states[b]) or "dead_end"
                rows.append(row)
            logits = torch.stack(rows)
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
            if token in eos or (stop_check is not None and stop_check(b, generated[b])):
                reasons[b] = "stop"
        if all(r is not None for r in reasons) or _step == ctx.max_new_tokens - 1:
            break
        logits = session.step(chosen)
        forwards += 1

    final = [r if r is not None else "length" for r in reasons]
    for b in range(batch):
        transform.finish(states[b], generated[b], final[b])
    elapsed = time.perf_counter() - started
    stats: dict[str, Any] = {
        "new_tokens": sum(len(g) for g in generated),
        "forward_passes": forwards,
        "decode_seconds": elapsed,
    }
    return DecodeResult(sequences=generated, prompt_rows=list(range(batch)), finish_reasons=final, stats=stats)
