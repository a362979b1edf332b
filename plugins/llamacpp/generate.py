"""``anydecode.plugins.llamacpp.generate``: any registered decoder on a llama-cpp-python ``Llama``.

    llm = anydecode.plugins.llamacpp.load_default()
    out = anydecode.plugins.llamacpp.generate(llm, "Hello", decoder="sample", temperature=0.7, seed=1)
    out.text, out.token_ids, out.finish_reason, out.sequences, out.stats
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from anydecode.algorithms.contracts.decoder import Decoder
from anydecode.algorithms.contracts.errors import ConfigError
from anydecode.algorithms.contracts.generation import GeneratedSequence, Generation
from anydecode.algorithms.generation import generation, repeat_prompts, run_decoder

from .._common import resolve_decoder
from ._runtime import check_llama
from .runtime import open_context
from .text import LlamaTokenizer, StreamDecoder, prompt_ids

#: the names this module gave the one result type before it was shared by every adapter
GenerationOutput = Generation
SequenceOutput = GeneratedSequence


def generate(llm: Any, prompt: str | Sequence[int], decoder: str | Decoder = "greedy", max_new_tokens: int = 128,
             *, chat: bool = False, on_text: Callable[[str], None] | None = None,
             decoder_config: dict[str, Any] | None = None, draft_model: Any = None,
             num_return_sequences: int = 1, prediction: str | Sequence[int] | None = None,
             **settings: Any) -> Generation:
    """Generate from ``prompt`` (text or token ids) with ``decoder`` and its ``settings``.

    ``draft_model`` (another ``Llama`` sharing the vocabulary) is the drafter of ``drafter="draft_model"``;
    ``num_return_sequences`` rows are decoded side by side (in a multi-sequence context) for decoders that do not
    return several sequences themselves. A prompt and output longer than the context end with
    ``finish_reason="length"``. ``prediction`` (OpenAI's predicted outputs: text or token ids the output is expected
    to largely repeat) is what ``iad`` and ``suffix`` draft from; the statistics then count
    ``accepted_prediction_tokens`` and ``rejected_prediction_tokens``.
    """
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens={max_new_tokens!r} must be an int >= 0")
    check_llama(llm)
    own = {**settings, **(decoder_config or {})}
    dec, config = resolve_decoder(decoder, own)
    ids = prompt_ids(llm, prompt, chat=chat)
    rows = repeat_prompts([ids], dec, num_return_sequences)
    if len(rows) == 1 and num_return_sequences > 1:
        config = dec.configure({**own, "num_return_sequences": num_return_sequences})
    if draft_model is not None and len(rows) > 1:
        raise ConfigError("draft_model runs one row at a time: give num_return_sequences=1")
    stream = StreamDecoder(llm) if on_text is not None else None
    eos = int(llm.token_eos())

    def on_token(row: int, token: int) -> None:
        if stream is not None and on_text is not None and row == 0 and token != eos:
            piece = stream.push(token)
            if piece:
                on_text(piece)

    ctx = open_context(llm, rows, max_new_tokens=max_new_tokens, draft_model=draft_model,
                       on_token=on_token if stream is not None and dec.kind == "transform" else None)
    if prediction is not None:
        predicted = LlamaTokenizer(llm).encode(prediction) if isinstance(prediction, str) else [
            int(t) for t in prediction]
        ctx.prediction = [predicted] * len(rows)
    result = run_decoder(dec, config, ctx)
    result.stats["prompt_tokens"] = len(ids)
    tokenizer = LlamaTokenizer(llm)
    out = generation(result, dec, "llamacpp", rows, lambda body: tokenizer.decode(body, skip_special_tokens=True),
                     ctx.eos_token_ids, group=len(rows))
    if on_text is not None and dec.kind == "loop" and out.sequences:
        on_text(out.sequences[0].text)
    return out
