"""Transform decoders as a llama-cpp-python ``LogitsProcessorList`` for ``Llama.create_completion`` users.

    procs = anydecode.plugins.llamacpp.logits_processor_list(llm, "gcd", grammar='root ::= "yes" | "no"')
    llm.create_completion(prompt, logits_processor=procs, temperature=1.0)

Each ``create_completion`` (or ``generate``) call is one request: llama-cpp-python builds a new sampler for every
call (``Llama._sampler``), and the processor takes the request's identity from it, never from the token ids (a
multi-turn chat that extends the previous prompt and answer is a new request). Per-request state lives in the shared
request lifecycle (:mod:`anydecode.algorithms.lifecycle`); a request is finished when EOS is seen, when the next
call begins, or by ``finish()``.

Two bugs of llama-cpp-python 0.3.x are worked around here: a bare function given as ``logits_processor`` is
silently ignored (the hook iterates it inside a ctypes callback), so this always returns a
``LogitsProcessorList``; and ``logit_bias`` together with ``logits_processor`` drops both (``list.extend``
returns None), so ``logit_bias`` is taken here and applied inside our processor instead.
"""

from __future__ import annotations

import itertools
import weakref
from typing import Any

import numpy as np
import torch

from anydecode.algorithms.contracts.decoder import Decoder, TransformContext
from anydecode.algorithms.lifecycle import RequestTable

from .._common import resolve_decoder
from ._runtime import import_llama_cpp
from .text import LlamaTokenizer


def _reference(obj: Any) -> Any:
    try:
        return weakref.ref(obj)
    except TypeError:  # not weak-referenceable: hold it (one sampler at a time)
        return lambda: obj


class TransformProcessor:
    """Applies one anydecode transform to llama.cpp's 1-D float32 scores, one request at a time."""

    def __init__(self, transform: Any, eos: frozenset[int], llm: Any = None,
                 logit_bias: dict[int, float] | None = None):
        self.transform = transform
        self.eos = eos
        self.llm = llm
        self.logit_bias = dict(logit_bias or {})
        self.calls = 0
        self.requests = RequestTable(eos)
        self._serials = itertools.count()
        self._key: int | None = None
        self._sampler: Any = None  # a reference to the sampler of the current request
        self._prompt_len = 0
        self._last: list[int] = []

    def _current_sampler(self) -> Any:
        return getattr(self.llm, "_sampler", None) if self.llm is not None else None

    def _is_new(self, ids: list[int]) -> bool:
        if self._key is None:
            return True
        sampler = self._current_sampler()
        if sampler is not None:
            return self._sampler is None or self._sampler() is not sampler
        return False  # no llm to read the request from: one request until finish()

    def _begin(self, ids: list[int]) -> None:
        self.finish()
        self._key = next(self._serials)
        sampler = self._current_sampler()
        self._sampler = _reference(sampler) if sampler is not None else None
        self._prompt_len = len(ids)
        self.requests.start(self._key, self.transform, ids)

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        ids = [int(t) for t in input_ids]
        if self._is_new(ids):
            self._begin(ids)
        self.calls += 1
        generated = ids[self._prompt_len:]
        self._last = generated
        logits = torch.from_numpy(np.array(scores, dtype=np.float32, copy=True))
        for token, bias in self.logit_bias.items():
            logits[int(token)] += float(bias)
        if generated and generated[-1] in self.eos:
            self.finish()
            return logits.numpy()
        out = self.requests.apply(self._key, generated, logits)
        return out.to(torch.float32).numpy()

    def finish(self, generated: list[int] | None = None) -> None:
        """End the current request (called automatically when the next one begins)."""
        if self._key is None:
            return
        key, self._key, self._sampler = self._key, None, None
        self.requests.finish(key, generated if generated is not None else self._last)
        self._last = []


def logits_processor_list(llm: Any, decoder: str | Decoder, *, logit_bias: dict[int, float] | None = None,
                          **settings: Any) -> Any:
    """A ``LogitsProcessorList`` running ``decoder``'s transform, for ``llm.create_completion(...)``."""
    llama_cpp = import_llama_cpp()
    dec, config = resolve_decoder(decoder, settings)
    tokenizer = LlamaTokenizer(llm)
    eos = frozenset({tokenizer.eos_token_id})
    ctx = TransformContext(vocab_size=tokenizer.vocab_size, eos_token_ids=eos, tokenizer=tokenizer,
                           runtime="llamacpp")
    processor = TransformProcessor(dec.transform(config, ctx), eos, llm, logit_bias)
    return llama_cpp.LogitsProcessorList([processor])
