"""``anydecode.plugins.vllm.generate``: loop decoders (beam, dbs, deal, best_of_n, ...) over a vLLM engine.

    llm = LLM(model=path, max_logprobs=20)
    outs = anydecode.plugins.vllm.generate(llm, ["Once upon a time"], decoder="dbs", num_beams=4,
                                           num_beam_groups=2, diversity_penalty=0.5, max_new_tokens=32)
    outs[0].sequences[0].text

All beams of all prompts are batched into one engine step per token, with prefix caching doing the reuse. Each
prompt gets one :class:`~anydecode.algorithms.contracts.generation.Generation` (the result type every adapter
returns).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from anydecode.algorithms.contracts.config import DecoderConfig
from anydecode.algorithms.contracts.decoder import DecodeContext, Decoder
from anydecode.algorithms.contracts.errors import ConfigError
from anydecode.algorithms.contracts.generation import Generation
from anydecode.algorithms.generation import generation, has_setting, repeat_prompts, run_decoder

from .._common import resolve_decoder
from .session import EngineStep, VLLMSession, offline_step

#: the names this module gave the shared result type before every adapter used it
VLLMGeneration = Generation


def generate(llm: Any, prompts: Sequence[str | Sequence[int]], decoder: str | Decoder = "beam",
             max_new_tokens: int = 64, *, top_logprobs: int = 20, num_return_sequences: int = 1,
             **settings: Any) -> list[Generation]:
    """Run ``decoder`` on an offline ``vllm.LLM`` for each prompt (text or token ids)."""
    return run_on_engine(llm.llm_engine.model_config, offline_step(llm), llm.get_tokenizer(), prompts, decoder,
                         max_new_tokens, top_logprobs=top_logprobs, num_return_sequences=num_return_sequences,
                         **settings)


def open_context(model_config: Any, step: EngineStep, tokenizer: Any, prompts: Sequence[Sequence[int]], *,
                 max_new_tokens: int, top_logprobs: int = 20, owner: object | None = None) -> DecodeContext:
    """A decode context on a fresh engine session holding ``prompts`` (one engine step reads their logits)."""
    from anydecode.plugins.hf.tokenizer import HFTokenizer

    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    session = VLLMSession(model_config, step, top_logprobs=top_logprobs, eos_token_ids=eos)
    started = time.perf_counter()
    logits = session.start([list(p) for p in prompts])
    prefill = time.perf_counter() - started
    room = int(model_config.max_model_len) - max(len(p) for p in prompts) - 1
    return DecodeContext(vocab_size=session.vocab_size, eos_token_ids=frozenset(eos),
                         tokenizer=HFTokenizer(tokenizer, session.vocab_size), runtime="vllm", session=session,
                         prompts=[list(p) for p in prompts], prompt_logits=logits,
                         max_new_tokens=max(0, min(max_new_tokens, room)), owner=owner, prefill_seconds=prefill)


def run_on_engine(model_config: Any, step: EngineStep, tokenizer: Any, prompts: Sequence[str | Sequence[int]],
                  decoder: str | Decoder, max_new_tokens: int, *, top_logprobs: int = 20,
                  num_return_sequences: int = 1, config: DecoderConfig | None = None,
                  **settings: Any) -> list[Generation]:
    """The engine-agnostic part of ``generate``, shared with the HTTP route (which passes the ``config`` it
    checked against the serving policy)."""
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens={max_new_tokens!r} must be an int >= 0")
    if not prompts:
        raise ConfigError("no prompts given")
    if config is not None:
        dec, _ = resolve_decoder(decoder)
    else:
        dec, _ = resolve_decoder(decoder)
        if num_return_sequences > 1 and has_setting(dec, "num_return_sequences"):
            settings = {**settings, "num_return_sequences": num_return_sequences}  # beam search returns its own
        dec, config = resolve_decoder(decoder, settings)
    ids = [tokenizer.encode(p) if isinstance(p, str) else [int(t) for t in p] for p in prompts]
    rows = repeat_prompts(ids, dec, num_return_sequences)
    group = len(rows) // len(ids)
    ctx = open_context(model_config, step, tokenizer, rows, max_new_tokens=max_new_tokens, top_logprobs=top_logprobs)
    result = run_decoder(dec, config, ctx)
    assert isinstance(ctx.session, VLLMSession)
    result.stats["engine_steps"] = ctx.session.forward_passes
    whole = generation(result, dec, "vllm", rows, lambda body: tokenizer.decode(body, skip_special_tokens=True),
                       ctx.eos_token_ids, group=group)
    return [Generation(decoder=whole.decoder, runtime="vllm", sequences=whole.for_prompt(p), stats=whole.stats,
                       prompt_token_ids=[ids[p]]) for p in range(len(ids))]
