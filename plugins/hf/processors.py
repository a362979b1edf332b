"""Transform decoders as a transformers ``LogitsProcessor``, for users' own ``model.generate`` calls.

    proc = anydecode.plugins.hf.logits_processor("gcd", tokenizer=tok, grammar='root ::= "yes" | "no"')
    model.generate(ids, logits_processor=LogitsProcessorList([proc]), do_sample=True, temperature=1.0)

transformers calls a processor with ``(input_ids (B, L), scores (B, V))`` before each token, from the
``LogitsProcessorList`` it builds for that ``generate()`` call, and never says when a call begins or a row ends. The
processor takes the request's identity from that list object (one per ``generate()`` call, so a new call is a new
request, whatever its prompt length or batch size), keeps one transform state per row in the shared request
lifecycle (:mod:`anydecode.algorithms.lifecycle`), finishes a row when it sees EOS at its end, and finishes the
rest when the call's list is released (``generate`` has returned) or when ``finish(sequences)`` is called with
``generate``'s output (which also reports each row's final token). Called outside a ``LogitsProcessorList``, its
calls are one request until ``finish()``.
"""

from __future__ import annotations

import itertools
import sys
import weakref
from typing import Any

import torch

from anydecode.algorithms.contracts.decoder import Decoder, TransformContext
from anydecode.algorithms.lifecycle import RequestTable

from .._common import resolve_decoder
from ._runtime import import_transformers
from .tokenizer import tokenizer_view

#: transformers releases whose generate() calls logits processors from a per-call LogitsProcessorList
TESTED_TRANSFORMERS = ("5.",)


def calling_list() -> Any:
    """The ``LogitsProcessorList`` calling the current processor, or None (a direct call)."""
    transformers = import_transformers()
    frame = sys._getframe(2)  # 0: here, 1: the processor's __call__, 2: its caller
    owner = frame.f_locals.get("self") if frame.f_code.co_name == "__call__" else None
    return owner if isinstance(owner, transformers.LogitsProcessorList) else None


class _Call:
    """One ``generate()`` call: its key, prompt length and rows."""

    def __init__(self, serial: int, input_ids: torch.Tensor):
        self.serial = serial
        self.prompt_len = int(input_ids.shape[1])
        self.rows = int(input_ids.shape[0])
        self.done = [False] * self.rows
        self.last: list[list[int]] = [[] for _ in range(self.rows)]


def make_logits_processor(decoder: str | Decoder, tokenizer: Any = None, *, eos_token_ids: Any = None,
                          vocab_size: int | None = None, **settings: Any) -> Any:
    """A transformers ``LogitsProcessor`` running the transform of ``decoder`` with ``settings``."""
    dec, config = resolve_decoder(decoder, settings)
    if eos_token_ids is None and tokenizer is not None and getattr(tokenizer, "eos_token_id", None) is not None:
        eos_token_ids = [tokenizer.eos_token_id]
    eos = frozenset(int(e) for e in (eos_token_ids or []))
    vocab = vocab_size or (len(tokenizer) if tokenizer is not None else 0)
    transform = dec.transform(config, TransformContext(vocab_size=vocab, eos_token_ids=eos,
                                                       tokenizer=tokenizer_view(tokenizer, vocab), runtime="hf"))
    base = import_transformers().LogitsProcessor

    class AnydecodeLogitsProcessor(base):  # type: ignore[misc, valid-type]
        """Applies an anydecode transform decoder to each row's next-token scores."""

        def __init__(self) -> None:
            self.decoder = dec
            self.config = config
            self.transform = transform
            self.requests = RequestTable(eos)
            self._serials = itertools.count()
            self._call: _Call | None = None
            self._owner: Any = None  # a weak reference to the calling list

        def _begin(self, owner: Any, input_ids: torch.Tensor) -> _Call:
            self.finish()
            call = self._call = _Call(next(self._serials), input_ids)
            self._owner = weakref.ref(owner) if owner is not None else None
            if owner is not None:  # generate() has returned once transformers drops its list
                weakref.finalize(owner, _release, weakref.ref(self), call.serial)
            for b in range(call.rows):
                self.requests.start((call.serial, b), self.transform, input_ids[b].tolist())
            return call

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            owner = calling_list()
            call = self._call
            if call is None or (owner is not None and (self._owner is None or self._owner() is not owner)):
                call = self._begin(owner, input_ids)
            rows: list[int] = []
            histories: list[list[int]] = []
            for b in range(call.rows):
                if call.done[b]:
                    continue
                generated = input_ids[b, call.prompt_len:].tolist()
                call.last[b] = generated
                if generated and generated[-1] in eos:
                    call.done[b] = True
                    self.requests.finish((call.serial, b), generated)
                    continue
                rows.append(b)
                histories.append(generated)
            if not rows:
                return scores.clone()
            # every live row of the step in one call (the grammar transforms mask them with one kernel call)
            keys = [(call.serial, b) for b in rows]
            if len(rows) == scores.shape[0]:
                return self.requests.apply_batch(keys, histories, scores.float()).to(scores.dtype)
            out = scores.clone()
            out[rows] = self.requests.apply_batch(keys, histories, scores[rows].float()).to(scores.dtype)
            return out

        def finish(self, sequences: torch.Tensor | None = None) -> None:
            """End the current generation: rows not ended yet are finished with their final tokens (those of
            ``sequences``, ``generate``'s output, where given)."""
            call, self._call, self._owner = self._call, None, None
            if call is not None:
                _end(self.requests, call, sequences, eos)

    return AnydecodeLogitsProcessor()


def _end(requests: RequestTable, call: _Call, sequences: torch.Tensor | None, eos: frozenset[int]) -> None:
    for b in range(call.rows):
        if call.done[b]:
            continue
        call.done[b] = True
        generated = call.last[b]
        if sequences is not None and b < sequences.shape[0]:
            generated = sequences[b, call.prompt_len:].tolist()
            cut = next((i for i, t in enumerate(generated) if t in eos), None)
            generated = generated[: cut + 1] if cut is not None else generated
        requests.finish((call.serial, b), generated)


def _release(processor_ref: Any, serial: int) -> None:
    """The calling list of ``generate()`` call ``serial`` was freed: that call is over."""
    processor = processor_ref()
    if processor is not None and processor._call is not None and processor._call.serial == serial:
        processor.finish()
