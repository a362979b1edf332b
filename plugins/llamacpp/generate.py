"""``anydecode.plugins.llamacpp.generate``: any registered decoder on a llama-cpp-python ``Llama``.

    llm = anydecode.plugins.llamacpp.load_default()
    out = anydecode.plugins.llamacpp.generate(llm, "Hello", decoder="sample", temperature=0.7, seed=1)
    out.text, out.token_ids, out.stats
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from anydecode.algorithms.contracts.decoder import DecodeContext, Decoder
from anydecode.algorithms.contracts.errors import ConfigError

from .._common import resolve_decoder
from ._runtime import import_llama_cpp
from .multiseq import multi_session_factory
from .session import LlamaSession
from .text import LlamaTokenizer, StreamDecoder, prompt_ids


@dataclasses.dataclass
class SequenceOutput:
    text: str
    token_ids: list[int]
    finish_reason: str
    score: float | None = None


@dataclasses.dataclass
class GenerationOutput:
    """The first (best) sequence's text and ids, every returned sequence, and the decoder's statistics."""

    text: str
    token_ids: list[int]
    decoder: str
    finish_reason: str
    stats: dict[str, Any]
    sequences: list[SequenceOutput]
    prompt_token_ids: list[int]


def default_threads() -> int:
    """The CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def load_default(n_ctx: int = 4096, n_threads: int | None = None, **kwargs: Any) -> Any:
    """A ``Llama`` on the embedded default model (quiet, CPU), decoding on every core this process may use.

    llama-cpp-python's own default is half the cores for one-token steps (``n_threads``) and all of them for
    batches (``n_threads_batch``); on this 2-core machine that decodes one token at a time on 1 core: plain greedy
    53 tok/s against 74 tok/s with ``n_threads=2`` (10 editing prompts). It also flatters speculative decoding,
    whose multi-token passes ran on both cores while the baseline's steps ran on one.
    """
    from anydecode.models import check_gguf, default_gguf_path

    llama_cpp = import_llama_cpp()
    path = kwargs.pop("model_path", None)
    path = check_gguf(path) if path else default_gguf_path()
    threads = n_threads or default_threads()
    kwargs.setdefault("n_threads_batch", threads)
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads,
                           verbose=kwargs.pop("verbose", False), **kwargs)


def generate(llm: Any, prompt: str | Sequence[int], decoder: str | Decoder = "greedy", max_new_tokens: int = 128,
             *, chat: bool = False, on_text: Callable[[str], None] | None = None,
             decoder_config: dict[str, Any] | None = None, draft_model: Any = None,
             **settings: Any) -> GenerationOutput:
    """Generate from ``prompt`` (text or token ids) with ``decoder`` and its ``settings``.

    ``draft_model`` (another ``Llama`` sharing the vocabulary) is the drafter of ``drafter="draft_model"``.
    """
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens={max_new_tokens!r} must be an int >= 0")
    dec, config = resolve_decoder(decoder, {**settings, **(decoder_config or {})})
    session = LlamaSession(llm)
    ids = prompt_ids(llm, prompt, chat=chat)
    started = time.perf_counter()
    logits = session.start(ids)
    prefill_seconds = time.perf_counter() - started
    stream = StreamDecoder(llm) if on_text is not None else None

    def on_token(row: int, token: int) -> None:
        if stream is not None and row == 0 and token not in session.eos_token_ids:
            piece = stream.push(token)
            if piece:
                on_text(piece)

    tokenizer = LlamaTokenizer(llm)
    ctx = DecodeContext(
        vocab_size=session.vocab_size,
        eos_token_ids=session.eos_token_ids,
        tokenizer=tokenizer,
        runtime="llamacpp",
        session=session,
        prompts=[ids],
        prompt_logits=logits,
        max_new_tokens=max_new_tokens,
        on_token=on_token if stream is not None and dec.kind == "transform" else None,
        # search decoders (beam, dbs, deal, best_of_n) run their rows in a second, multi-sequence context
        extra={"llama": llm, "make_multi_session": multi_session_factory(llm, [ids], max_new_tokens)},
    )
    if draft_model is not None:
        draft = LlamaSession(draft_model)
        draft.start(ids)
        ctx.extra["draft_session"] = draft
    result = dec.run(config, ctx)
    result.stats["target_forward_passes"] = session.forward_passes
    result.stats["prompt_tokens"] = len(ids)
    result.stats["prefill_seconds"] = prefill_seconds
    seqs = []
    for i, seq in enumerate(result.sequences):
        body = [t for t in seq if t not in session.eos_token_ids]
        seqs.append(SequenceOutput(
            text=tokenizer.decode(body, skip_special_tokens=True),
            token_ids=list(seq),
            finish_reason=result.finish_reasons[i],
            score=result.scores[i] if result.scores is not None else None,
        ))
    if stream is not None and dec.kind == "loop" and seqs:
        on_text(seqs[0].text)
    first = seqs[0] if seqs else SequenceOutput("", [], "length")
    return GenerationOutput(text=first.text, token_ids=first.token_ids, decoder=dec.name,
                            finish_reason=first.finish_reason, stats=result.stats, sequences=seqs,
                            prompt_token_ids=ids)
