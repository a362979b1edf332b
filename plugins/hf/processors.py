"""Transform decoders as a transformers ``LogitsProcessor``, for users' own ``model.generate`` calls.

    proc = anydecode.plugins.hf.logits_processor("gcd", tokenizer=tok, grammar='root ::= "yes" | "no"')
    model.generate(ids, logits_processor=LogitsProcessorList([proc]), do_sample=True, temperature=1.0)

transformers calls a processor with ``(input_ids (B, L), scores (B, V))`` before each token and never says when
a row has ended. The processor takes the prompt length from its first call of a generation, keeps one transform
state per row, finishes a row when it sees EOS at its end, and finishes the rest when the next generation starts
or when ``finish(sequences)`` is called with ``generate``'s output.
"""

from __future__ import annotations

from typing import Any

import torch

from anydecode.algorithms.contracts.decoder import Decoder, TransformContext
from anydecode.algorithms.contracts.transform import LogitsTransform

from .._common import resolve_decoder
from ._runtime import import_transformers


def _processor_base() -> type:
    return import_transformers().LogitsProcessor


class _Rows:
    """Per-row transform states of one generation call."""

    def __init__(self, transform: LogitsTransform, input_ids: torch.Tensor):
        self.prompt_len = int(input_ids.shape[1])
        self.states = [transform.start(row.tolist()) for row in input_ids]
        self.done = [False] * int(input_ids.shape[0])


def make_logits_processor(decoder: str | Decoder, tokenizer: Any = None, *, eos_token_ids: Any = None,
                          vocab_size: int | None = None, **settings: Any) -> Any:
    """A transformers ``LogitsProcessor`` running the transform of ``decoder`` with ``settings``."""
    dec, config = resolve_decoder(decoder, settings)
    if eos_token_ids is None and tokenizer is not None and getattr(tokenizer, "eos_token_id", None) is not None:
        eos_token_ids = [tokenizer.eos_token_id]
    eos = frozenset(int(e) for e in (eos_token_ids or []))
    vocab = vocab_size or (len(tokenizer) if tokenizer is not None else 0)
    transform = dec.transform(config, TransformContext(vocab_size=vocab, eos_token_ids=eos, tokenizer=tokenizer,
                                                       runtime="hf"))
    base = _processor_base()

    class AnydecodeLogitsProcessor(base):  # type: ignore[misc, valid-type]
        """Applies an anydecode transform decoder to each row's next-token scores."""

        def __init__(self) -> None:
            self.decoder = dec
            self.config = config
            self.transform = transform
            self._rows: _Rows | None = None

        def _begin_if_new(self, input_ids: torch.Tensor) -> _Rows:
            rows = self._rows
            if rows is None or rows.prompt_len > input_ids.shape[1] or len(rows.states) != input_ids.shape[0]:
                self.finish()
                rows = self._rows = _Rows(self.transform, input_ids)
            return rows

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            rows = self._begin_if_new(input_ids)
            out = scores.clone()
            for b in range(input_ids.shape[0]):
                generated = input_ids[b, rows.prompt_len:].tolist()
                if rows.done[b] or (generated and generated[-1] in eos):
                    if not rows.done[b]:
                        rows.done[b] = True
                        self.transform.finish(rows.states[b], generated, "stop")
                    continue
                out[b] = self.transform.apply(rows.states[b], generated, scores[b].float()).to(scores.dtype)
            return out

        def finish(self, sequences: torch.Tensor | None = None) -> None:
            """End the current generation: rows not ended yet are finished with their final tokens."""
            rows, self._rows = self._rows, None
            if rows is None:
                return
            for b, state in enumerate(rows.states):
                if rows.done[b]:
                    continue
                generated = sequences[b, rows.prompt_len:].tolist() if sequences is not None else []
                if generated and eos:
                    cut = next((i for i, t in enumerate(generated) if t in eos), None)
                    generated = generated[: cut + 1] if cut is not None else generated
                reason = "stop" if generated and generated[-1] in eos else "length"
                self.transform.finish(state, generated, reason)

    return AnydecodeLogitsProcessor()
