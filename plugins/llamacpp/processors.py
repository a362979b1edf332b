"""Transform decoders as a llama-cpp-python ``LogitsProcessorList`` for ``Llama.create_completion`` users.

Two bugs of llama-cpp-python 0.3.x are worked around here: a bare function given as ``logits_processor`` is
silently ignored (the hook iterates it inside a ctypes callback), so this always returns a
``LogitsProcessorList``; and ``logit_bias`` together with ``logits_processor`` drops both (``list.extend``
returns None), so ``logit_bias`` is taken here and applied inside our processor instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from anydecode.algorithms.contracts.decoder import Decoder, TransformContext

from .._common import resolve_decoder
from ._runtime import import_llama_cpp
from .text import LlamaTokenizer


class TransformProcessor:
    """Applies one anydecode transform to llama.cpp's 1-D float32 scores, one completion at a time.

    llama.cpp passes the ids of prompt plus generated tokens; the prompt length is taken from the first call of
    a completion (a call whose ids do not extend the previous call's starts a new one).
    """

    def __init__(self, transform: Any, eos: frozenset[int], logit_bias: dict[int, float] | None = None):
        self.transform = transform
        self.eos = eos
        self.logit_bias = dict(logit_bias or {})
        self.calls = 0
        self._prompt_len: int | None = None
        self._last: list[int] = []
        self._state: Any = None

    def _begin_if_new(self, ids: list[int]) -> None:
        if self._prompt_len is not None and ids[: len(self._last)] == self._last and len(ids) > len(self._last):
            return
        self.finish()
        self._prompt_len = len(ids)
        self._state = self.transform.start(ids)

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        ids = [int(t) for t in input_ids]
        self._begin_if_new(ids)
        self._last = ids
        self.calls += 1
        assert self._prompt_len is not None
        logits = torch.from_numpy(np.array(scores, dtype=np.float32, copy=True))
        for token, bias in self.logit_bias.items():
            logits[int(token)] += float(bias)
        out = self.transform.apply(self._state, ids[self._prompt_len:], logits)
        return out.to(torch.float32).numpy()

    def finish(self, generated: list[int] | None = None) -> None:
        """End the current completion (called automatically when the next one starts)."""
        if self._prompt_len is None:
            return
        tail = generated if generated is not None else self._last[self._prompt_len:]
        reason = "stop" if tail and tail[-1] in self.eos else "length"
        self.transform.finish(self._state, tail, reason)
        self._prompt_len, self._state, self._last = None, None, []


def logits_processor_list(llm: Any, decoder: str | Decoder, *, logit_bias: dict[int, float] | None = None,
                          **settings: Any) -> Any:
    """A ``LogitsProcessorList`` running ``decoder``'s transform, for ``llm.create_completion(...)``."""
    llama_cpp = import_llama_cpp()
    dec, config = resolve_decoder(decoder, settings)
    tokenizer = LlamaTokenizer(llm)
    eos = frozenset({tokenizer.eos_token_id})
    ctx = TransformContext(vocab_size=tokenizer.vocab_size, eos_token_ids=eos, tokenizer=tokenizer,
                           runtime="llamacpp")
    processor = TransformProcessor(dec.transform(config, ctx), eos, logit_bias)
    return llama_cpp.LogitsProcessorList([processor])
