"""``anydecode.plugins.vllm.generate``: loop decoders (beam, dbs, deal, best_of_n, ...) over a vLLM engine.

    llm = LLM(model=path, max_logprobs=20)
    outs = anydecode.plugins.vllm.generate(llm, ["Once upon a time"], decoder="dbs", num_beams=4,
                                           num_beam_groups=2, diversity_penalty=0.5, max_new_tokens=32)

All beams of all prompts are batched into one engine step per token, with prefix caching doing the reuse.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from anydecode.algorithms.contracts.decoder import DecodeContext, Decoder
from anydecode.algorithms.contracts.errors import ConfigError

from .._common import resolve_decoder
from .session import EngineStep, VLLMSession, offline_step


@dataclasses.dataclass
class VLLMSequence:
    text: str
    token_ids: list[int]
    finish_reason: str
    score: float | None


@dataclasses.dataclass
class VLLMGeneration:
    """The sequences a decoder returned for one prompt, best first, and the run's statistics."""

    prompt: str | list[int]
    sequences: list[VLLMSequence]
    stats: dict[str, Any]


def generate(llm: Any, prompts: Sequence[str | Sequence[int]], decoder: str | Decoder = "beam",
             max_new_tokens: int = 64, *, top_logprobs: int = 20, **settings: Any) -> list[VLLMGeneration]:
    """Run ``decoder`` on an offline ``vllm.LLM`` for each prompt (text or token ids)."""
    return run_on_engine(llm.llm_engine.model_config, offline_step(llm), llm.get_tokenizer(), prompts, decoder,
                         max_new_tokens, top_logprobs=top_logprobs, **settings)


def run_on_engine(model_config: Any, step: EngineStep, tokenizer: Any, prompts: Sequence[str | Sequence[int]],
                  decoder: str | Decoder, max_new_tokens: int, *, top_logprobs: int = 20,
                  **settings: Any) -> list[VLLMGeneration]:
    """The engine-agnostic part of ``generate``, shared with the HTTP route."""
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens={max_new_tokens!r} must be an int >= 0")
    if not prompts:
        raise ConfigError("no prompts given")
    dec, config = resolve_decoder(decoder, settings)
    ids = [tokenizer.encode(p) if isinstance(p, str) else [int(t) for t in p] for p in prompts]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    session = VLLMSession(model_config, step, top_logprobs=top_logprobs, eos_token_ids=eos)
    logits = session.start(ids)
    ctx = DecodeContext(vocab_size=session.vocab_size, eos_token_ids=frozenset(eos), tokenizer=tokenizer,
                        runtime="vllm", session=session, prompts=ids, prompt_logits=logits,
                        max_new_tokens=max_new_tokens)
    result = dec.run(config, ctx)
    result.stats["engine_steps"] = session.forward_passes
    out = [VLLMGeneration(prompt=p, sequences=[], stats=result.stats) for p in prompts]
    for i, (seq, row) in enumerate(zip(result.sequences, result.prompt_rows)):
        body = [t for t in seq if t not in eos]
        out[row].sequences.append(VLLMSequence(
            text=tokenizer.decode(body, skip_special_tokens=True), token_ids=list(seq),
            finish_reason=result.finish_reasons[i], score=result.scores[i] if result.scores is not None else None))
    return out
