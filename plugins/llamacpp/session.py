"""Model session over a llama-cpp-python ``Llama``: one sequence, rollback by ``n_tokens``.

A block is decoded in one ``llama_decode`` call with logits requested at every position (so a draft is verified
in one pass even when the Llama was built without ``logits_all``); a single token asks for one row of logits,
as llama.cpp's own generation loop does.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import numpy as np
import torch

from anydecode.algorithms.contracts.errors import ContextFull, RuntimeAdapterError
from anydecode.algorithms.contracts.session import ModelSession, token_rows

from ._runtime import check_llama, import_llama_cpp


class LlamaSession(ModelSession):
    """One sequence in a ``Llama``'s context. ``start(prompt)`` returns the logits after the prompt."""

    #: the draft controller's prior ``(c0, c1, cb)`` of ``c0 + c1 * width + cb * (width > 1)`` in units of a one-token
    #: forward: a block of several tokens takes another kernel path, so it costs a step of its own (``cb``); the
    #: controller replaces the prior with what it measures
    forward_cost = (0.63, 0.37, 0.43)
    #: blocks of up to this many tokens give one-token logits with flash attention on the CPUs measured (an AVX-512
    #: EPYC differs from 64 tokens up: another matrix kernel); ``greedy_parting_gap`` measures this width
    max_block = 32

    def __init__(self, llm):
        check_llama(llm)
        self.llm = llm
        self._lib = import_llama_cpp()
        self.vocab_size = int(llm.n_vocab())
        self.eos_token_ids = frozenset({int(llm.token_eos())})
        # the context's cells, or llama-cpp-python's token buffer where it is shorter: a Llama built with
        # n_ctx=64 gets 256 cells from llama.cpp but an input_ids buffer of 64
        self.capacity = min(int(llm.n_ctx()), int(len(llm.input_ids)))
        self.prompt_length = 0
        self.forward_passes = 0

    @property
    def batch_size(self) -> int:
        return 1

    @property
    def length(self) -> int:
        return int(self.llm.n_tokens)

    def tokens(self, row: int = 0) -> list[int]:
        return [int(t) for t in self.llm.input_ids[: self.llm.n_tokens]]

    def start(self, prompt: Sequence[int]) -> torch.Tensor:
        """Put ``prompt`` in the context, prefilled from its first token; logits ``(1, V)``.

        A prefix already in the context is not reused: its cached keys and values may come from other kernels
        than a prefill's (one-token steps, or a block of another width), which moves logits enough to change a
        near-tie, so a call's output would depend on the calls before it (docs/runtimes/llamacpp-numerics.md)."""
        prompt = [int(t) for t in prompt]
        if not prompt:
            raise RuntimeAdapterError("the prompt is empty: llama.cpp needs at least one token")
        if len(prompt) >= self.capacity:
            raise RuntimeAdapterError(f"prompt of {len(prompt)} tokens does not fit the context of {self.capacity} "
                                      "tokens (n_ctx): shorten it or load the model with a larger n_ctx")
        self.llm.n_tokens = 0
        self.prompt_length = len(prompt)
        return torch.from_numpy(self._decode(prompt, all_logits=False))

    def append(self, tokens: torch.Tensor | Sequence[Sequence[int]]) -> torch.Tensor:
        block = token_rows(tokens, 1)[0]
        if self.llm.n_tokens + len(block) > self.capacity:
            raise ContextFull(f"context full: {self.llm.n_tokens} + {len(block)} tokens exceed {self.capacity}")
        logits = self._decode(block, all_logits=len(block) > 1)
        return torch.from_numpy(logits.reshape(1, *logits.shape))

    def step(self, tokens: Sequence[int]) -> torch.Tensor:
        (token,) = tokens
        if self.llm.n_tokens + 1 > self.capacity:
            raise ContextFull(f"context full: {self.capacity} tokens")
        return torch.from_numpy(self._decode([int(token)], all_logits=False))

    def truncate(self, length: int) -> None:
        if not 0 <= length <= self.llm.n_tokens:
            raise RuntimeAdapterError(f"cannot truncate to {length}: the session holds {self.llm.n_tokens} tokens")
        self.llm.n_tokens = length  # the next decode drops KV entries at positions >= length

    def _decode(self, tokens: list[int], all_logits: bool) -> np.ndarray:
        """Decode ``tokens`` after the current position; float32 logits ``(n, V)`` for each token (or the last only).

        The plain loop calls this once per token, right after llama.cpp's forward has evicted the code of every call
        from the caches, so it makes few calls: one copy of llama.cpp's logits, and no concatenation for one batch."""
        llm, lib = self.llm, self._lib
        n_past = int(llm.n_tokens)
        llm._ctx.kv_cache_seq_rm(-1, n_past, -1)
        rows = []
        for start in range(0, len(tokens), llm.n_batch):
            chunk = tokens[start: start + llm.n_batch]
            last_chunk = start + llm.n_batch >= len(tokens)
            llm._batch.set_batch(batch=chunk, n_past=n_past, logits_all=all_logits)
            llm._ctx.decode(llm._batch)
            self.forward_passes += 1
            llm.input_ids[n_past: n_past + len(chunk)] = chunk
            n_past += len(chunk)
            llm.n_tokens = n_past
            if all_logits:
                rows.append(self._logits(lib.llama_get_logits(llm._ctx.ctx), len(chunk)))
            elif last_chunk:
                rows.append(self._logits(lib.llama_get_logits_ith(llm._ctx.ctx, -1), 1))
        return rows[0] if len(rows) == 1 else np.concatenate(rows, axis=0)

    def _logits(self, pointer, n: int) -> np.ndarray:
        """A copy of ``n`` rows of logits at llama.cpp's ``float *`` ``pointer`` (valid until the next decode)."""
        address = ctypes.cast(pointer, ctypes.c_void_p).value
        if not address:
            raise RuntimeAdapterError("llama.cpp returned no logits for the decoded batch")
        view = np.frombuffer((ctypes.c_float * (n * self.vocab_size)).from_address(address), dtype=np.float32)
        return view.copy().reshape(n, self.vocab_size)
