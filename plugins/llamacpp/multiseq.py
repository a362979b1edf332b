"""Several sequences of a ``Llama`` evaluated side by side: a second llama.cpp context for search decoders.

The ``Llama``'s own context holds one sequence (``n_seq_max=1``). Beam search, DeAL and best-of-N need many rows
that share a prompt, so this session creates a second context on the already loaded model with
``n_seq_max`` sequences and a unified KV cache (``kv_unified=True``, required for cells shared by several
sequences). Each row is one sequence id. ``append`` decodes one token block of every row in one ``llama_decode``
batch; ``select`` forks rows with ``llama_memory_seq_cp`` (in a unified cache this tags the same cells with another
sequence id, so a shared prefix is stored and computed once) and prunes them with ``llama_memory_seq_rm``;
``truncate`` removes every sequence's positions past a length. The context is kept on the ``Llama`` and reused
by later searches that fit in it.

The adapter hands search decoders a factory, ``DecodeContext.open_rows = multi_session_factory(llm, prompts,
max_new_tokens)``; a decoder calls it with the number of rows it needs.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from anydecode.algorithms.contracts.errors import RuntimeAdapterError
from anydecode.algorithms.contracts.session import TokenRowsSession, token_rows

from ._runtime import check_llama, import_llama_cpp
from .session import LlamaSession

#: contexts kept per Llama for reuse: (context, n_ctx, n_seq_max, n_batch)
_CONTEXTS: weakref.WeakKeyDictionary[Any, tuple[Any, int, int, int]] = weakref.WeakKeyDictionary()


def _round_up(n: int, step: int) -> int:
    return ((n + step - 1) // step) * step


def _context_for(llm: Any, n_ctx: int, n_seq_max: int) -> tuple[Any, int]:
    """A second context on ``llm``'s model with at least ``n_ctx`` cells and ``n_seq_max`` sequences."""
    lib = import_llama_cpp()
    cached = _CONTEXTS.get(llm)
    if cached is not None and cached[1] >= n_ctx and cached[2] >= n_seq_max:
        lib.llama_memory_clear(lib.llama_get_memory(cached[0].ctx), True)
        return cached[0], cached[3]
    if cached is not None:
        cached[0].close()
        del _CONTEXTS[llm]
    params = lib.llama_context_default_params()
    params.n_ctx = n_ctx
    params.n_batch = min(n_ctx, 2048)
    params.n_ubatch = min(n_ctx, 512)
    params.n_seq_max = n_seq_max
    params.kv_unified = True
    own = llm.context_params
    params.n_threads = own.n_threads
    params.n_threads_batch = own.n_threads_batch
    params.flash_attn_type = own.flash_attn_type  # the same attention path as the Llama's own context
    try:
        context = lib._internals.LlamaContext(model=llm._model, params=params, verbose=False)
    except ValueError as exc:
        raise RuntimeAdapterError(
            f"llama.cpp could not create a second context (n_ctx={n_ctx}, n_seq_max={n_seq_max}) for the search "
            f"decoder's sequences: {exc}"
        ) from None
    _CONTEXTS[llm] = (context, n_ctx, n_seq_max, int(params.n_batch))
    return context, int(params.n_batch)


class MultiSequenceSession(TokenRowsSession):
    """Up to ``max_rows`` rows, each a sequence id in a unified-KV llama.cpp context on the Llama's model."""

    def __init__(self, llm: Any, max_rows: int, n_ctx: int):
        check_llama(llm)
        lib = import_llama_cpp()
        limit = int(lib.llama_max_parallel_sequences())
        if max_rows < 1 or 2 * max_rows > limit:
            raise RuntimeAdapterError(
                f"a llama.cpp search session holds 1 to {limit // 2} rows (two sequence ids each while forking); "
                f"{max_rows} were asked for: lower num_beams, beam * k or num_samples"
            )
        self.llm = llm
        self._lib = lib
        self.vocab_size = int(llm.n_vocab())
        self.eos_token_ids = frozenset({int(llm.token_eos())})
        self.max_rows = max_rows
        # one llama_decode holds every row's block: kept within the width a single sequence's block may have
        # (LlamaSession.max_block), so that speculation on several rows stays on the narrow kernels too
        self.max_block = max(1, LlamaSession.max_block // max_rows)
        self.n_seq_max = 2 * max_rows  # room to copy every kept row to a fresh id before the old ones are dropped
        self.context, self.n_batch = _context_for(llm, n_ctx, self.n_seq_max)
        self.n_ctx = n_ctx
        self._ctx = self.context.ctx
        self._memory = lib.llama_get_memory(self._ctx)
        self._batch = lib.llama_batch_init(self.n_batch, 0, 1)
        self.rows: list[list[int]] = []
        self._seq: list[int] = []
        self._free: list[int] = list(range(self.n_seq_max - 1, -1, -1))
        self.forward_passes = 0
        self.closed = False

    # -- state ---------------------------------------------------------------------------------------------------
    def sequence_ids(self) -> list[int]:
        """The llama.cpp sequence id of each row (for tests and debugging)."""
        return list(self._seq)

    # -- forward -------------------------------------------------------------------------------------------------
    def start(self, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """Put each prompt in its own sequence; logits after each prompt, shape ``(len(prompts), vocab)``."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise RuntimeAdapterError("every prompt needs at least one token")
        if len(prompts) > self.max_rows:
            raise RuntimeAdapterError(f"{len(prompts)} prompts do not fit a session of {self.max_rows} rows")
        self._lib.llama_memory_clear(self._memory, True)
        self._free = list(range(self.n_seq_max - 1, -1, -1))
        self.rows, self._seq = [], []
        out = []
        for prompt in prompts:
            seq = self._free.pop()
            self.rows.append([])
            self._seq.append(seq)
            row = len(self.rows) - 1
            tokens = [int(t) for t in prompt]
            logits = self._decode([(row, t, len(tokens) - 1 == i) for i, t in enumerate(tokens)])
            out.append(logits[-1])
        return torch.stack(out)

    def append(self, tokens: torch.Tensor | Sequence[Sequence[int]]) -> torch.Tensor:
        block = token_rows(tokens, self.batch_size)
        k = len(block[0])
        items = [(row, int(t), True) for row in range(self.batch_size) for t in block[row]]
        logits = self._decode(items)
        return logits.view(self.batch_size, k, self.vocab_size)

    def _decode(self, items: list[tuple[int, int, bool]]) -> torch.Tensor:
        """Decode ``(row, token, want_logits)`` items in order, in as few ``llama_decode`` calls as fit a batch."""
        lib, batch = self._lib, self._batch
        if self.length + sum(1 for _ in items) // max(1, self.batch_size) > self.n_ctx:
            raise RuntimeAdapterError(f"the search session's context (n_ctx={self.n_ctx}) is full")
        positions = [len(r) for r in self.rows]
        outputs = []
        for start in range(0, len(items), self.n_batch):
            chunk = items[start: start + self.n_batch]
            batch.n_tokens = len(chunk)
            want = 0
            for i, (row, token, logits) in enumerate(chunk):
                batch.token[i] = token
                batch.pos[i] = positions[row]
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = self._seq[row]
                batch.logits[i] = bool(logits)
                want += bool(logits)
                positions[row] += 1
                self.rows[row].append(token)
            rc = lib.llama_decode(self._ctx, batch)
            self.forward_passes += 1
            if rc != 0:
                raise RuntimeAdapterError(
                    f"llama_decode failed (rc={rc}) on {len(chunk)} tokens of {self.batch_size} sequences: the search "
                    f"session's KV cache (n_ctx={self.n_ctx}) is probably full"
                )
            if want:
                ptr = lib.llama_get_logits(self._ctx)
                outputs.append(np.ctypeslib.as_array(ptr, shape=(want, self.vocab_size)).copy())
        if not outputs:
            return torch.empty(0, self.vocab_size)
        return torch.from_numpy(np.concatenate(outputs, axis=0))

    def truncate(self, length: int) -> None:
        if not 0 < length <= self.length:
            raise RuntimeAdapterError(f"cannot truncate to {length}: the rows hold {self.length} tokens")
        for row, seq in enumerate(self._seq):
            self._lib.llama_memory_seq_rm(self._memory, seq, length, -1)
            del self.rows[row][length:]

    def select(self, rows: Sequence[int]) -> None:
        rows = [int(r) for r in rows]
        if not rows or min(rows) < 0 or max(rows) >= self.batch_size:
            raise RuntimeAdapterError(f"select() rows {rows} out of range for {self.batch_size} rows")
        if len(rows) > self.max_rows:
            raise RuntimeAdapterError(f"select() asks for {len(rows)} rows; this session holds at most {self.max_rows}")
        new_seq, new_rows, claimed = [], [], set()
        for r in rows:
            seq = self._seq[r]
            if seq not in claimed:
                claimed.add(seq)
                new_seq.append(seq)
            else:  # a fork: the copy shares the row's cells in the unified cache
                fresh = self._free.pop()
                self._lib.llama_memory_seq_cp(self._memory, seq, fresh, -1, -1)
                new_seq.append(fresh)
            new_rows.append(list(self.rows[r]))
        for seq in self._seq:
            if seq not in claimed:
                self._lib.llama_memory_seq_rm(self._memory, seq, -1, -1)
                self._free.append(seq)
        self._seq, self.rows = new_seq, new_rows

    def close(self) -> None:
        """Free the batch and empty the cache (the context stays on the Llama for the next search)."""
        if self.closed:
            return
        self.closed = True
        self._lib.llama_memory_clear(self._memory, True)
        self._lib.llama_batch_free(self._batch)


def multi_session_factory(llm: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int
                          ) -> Callable[..., tuple[MultiSequenceSession, torch.Tensor]]:
    """``make(rows, extra_tokens=0) -> (session, logits after each prompt)`` for ``DecodeContext.open_rows``.

    The context is sized for the worst case of no sharing beyond the prompt:
    ``longest prompt + rows * (max_new_tokens + extra_tokens + 1)`` cells.
    """
    prompts = [list(p) for p in prompts]

    def make(rows: int, extra_tokens: int = 0) -> tuple[MultiSequenceSession, torch.Tensor]:
        longest = max(len(p) for p in prompts)
        cells = sum(len(p) for p in prompts) + rows * (max_new_tokens + extra_tokens + 1)
        n_ctx = _round_up(max(cells, longest + 1, 256), 256)
        session = MultiSequenceSession(llm, rows, n_ctx)
        try:
            logits = session.start(prompts)
        except Exception:
            session.close()
            raise
        return session, logits

    return make
