"""The request lifecycle of a native logits hook, written once for every runtime.

A runtime calls its logits hook (a transformers ``LogitsProcessor``, a llama.cpp ``LogitsProcessorList``, a vLLM
logits processor) once per step with the rows it is sampling; the hook keeps one transform state per request.
:class:`RequestTable` is that bookkeeping, in this order:

1. ``start(key, transform, prompt_ids)`` when the runtime begins a request. ``key`` is the request's identity as
   the runtime gives it (a vLLM batch slot, a transformers ``generate()`` call and row, a llama.cpp completion);
   starting a key that is still live first ends the old request with ``abort`` (a reused slot).
2. ``apply(key, generated_ids, logits)`` before each token of that request is chosen. If the transform forbids every
   token (a grammar dead end) or raises, the request is ended: the returned row allows only an end-of-sequence
   token, so the runtime stops the request the ordinary way, and ``finish`` reports ``dead_end`` or ``error``.
   ``apply_batch(keys, generated, logits)`` does the same for every row of a step, handing the rows that share a
   transform to its ``apply_rows`` in one call (the grammar transforms then mask them with one kernel call).
3. ``finish(key, generated_ids, reason)`` once, when the request ends (``None``: ``stop`` when the last token is an
   end-of-sequence token, else ``length``); ``abort(key)`` when the runtime drops it. A key the table does not hold is
   ignored, so a runtime may report an end twice.

``move`` and ``swap`` re-key live requests (vLLM condenses its batch). ``finish_all`` ends every live request.
Nothing in here guesses a request's identity: the caller passes it.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from typing import Any

import torch

from .contracts.errors import REQUEST_ERRORS
from .contracts.transform import LogitsTransform

logger = logging.getLogger("anydecode")


@dataclasses.dataclass
class _Live:
    transform: LogitsTransform | None
    state: Any
    prompt_ids: list[int]
    #: a transform still being built (a grammar compiling off the engine step)
    pending: Future | None = None
    #: why the hook ended the request itself (``dead_end``, ``error``), reported by ``finish``
    forced: str | None = None


class RequestTable:
    """Live requests of one logits hook, by key; safe to call from one thread at a time per hook."""

    def __init__(self, eos_token_ids: Sequence[int] | frozenset[int], *, wait_seconds: float | None = None,
                 on_finish: Callable[[Hashable, str], None] | None = None):
        self.eos = frozenset(int(t) for t in eos_token_ids)
        #: how long ``apply`` waits for a pending transform before ending its request (None: as long as it takes)
        self.wait_seconds = wait_seconds
        self.on_finish = on_finish
        self._live: dict[Hashable, _Live] = {}
        #: requests ended, by reason; ``dead_end`` and ``error`` count the requests the hook ended itself
        self.counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    # -- queries ---------------------------------------------------------------------------------------------------
    def __contains__(self, key: Hashable) -> bool:
        return key in self._live

    def __len__(self) -> int:
        return len(self._live)

    def keys(self) -> list[Hashable]:
        return list(self._live)

    def forced_reason(self, key: Hashable) -> str | None:
        live = self._live.get(key)
        return None if live is None else live.forced

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def start(self, key: Hashable, transform: LogitsTransform | Future, prompt_ids: Sequence[int]) -> None:
        """Begin a request under ``key`` (ending with ``abort`` whatever request still held that key)."""
        self.abort(key)
        prompt = [int(t) for t in prompt_ids]
        if isinstance(transform, Future):
            live = _Live(None, None, prompt, pending=transform)
        else:
            live = _Live(transform, None, prompt)
            try:
                live.state = transform.start(prompt)
            except REQUEST_ERRORS as exc:
                self._fail(live, exc)
        with self._lock:
            self._live[key] = live
            self.counts["started"] += 1

    def _ready(self, live: _Live) -> bool:
        """Resolve a pending transform; False when it failed or timed out (the request is then forced to end)."""
        if live.pending is None:
            return live.transform is not None
        future, live.pending = live.pending, None
        try:
            transform = future.result(timeout=self.wait_seconds)
            live.transform = transform
            live.state = transform.start(live.prompt_ids)
        except REQUEST_ERRORS as exc:
            self._fail(live, exc)
            return False
        except TimeoutError:
            self._fail(live, TimeoutError(f"the request's transform was not ready within {self.wait_seconds} s"))
            return False
        return True

    def _fail(self, live: _Live, exc: BaseException) -> None:
        live.forced = "error"
        live.transform = None
        logger.error("anydecode: a request's logits transform failed (%s: %s); ending that request",
                     type(exc).__name__, exc)

    def _end_row(self, logits: torch.Tensor) -> torch.Tensor:
        out = torch.full_like(logits, float("-inf"))
        for token in self.eos or {0}:
            if 0 <= token < out.shape[-1]:
                out[token] = 0.0
        return out

    def apply(self, key: Hashable, generated_ids: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        """The request's transformed logits row (a new tensor, or ``logits`` for an unknown key)."""
        live = self._live.get(key)
        if live is None:
            return logits
        if live.forced is not None or not self._ready(live):
            return self._end_row(logits)
        assert live.transform is not None
        try:
            out = live.transform.apply(live.state, generated_ids, logits)
        except REQUEST_ERRORS as exc:
            self._fail(live, exc)
            return self._end_row(logits)
        if not bool(torch.isfinite(out).any()):
            live.forced = live.transform.forced_stop(live.state) or "dead_end"
            return self._end_row(logits)
        return out

    def apply_batch(self, keys: Sequence[Hashable], generated: Sequence[Sequence[int]],
                    logits: torch.Tensor) -> torch.Tensor:
        """The transformed logits of several requests, ``(rows, vocab)`` (row ``i``: ``keys[i]``, ``generated[i]``),
        equal to :meth:`apply` row by row (a new tensor). Rows of one transform go through its ``apply_rows``
        together."""
        ended: list[int] = []
        groups: dict[int, tuple[LogitsTransform, list[int]]] = {}
        for i, key in enumerate(keys):
            live = self._live.get(key)
            if live is None:
                continue
            if live.forced is not None or not self._ready(live):
                ended.append(i)
                continue
            assert live.transform is not None
            groups.setdefault(id(live.transform), (live.transform, []))[1].append(i)
        out: torch.Tensor | None = None
        for transform, rows in groups.values():
            lives = [self._live[keys[i]] for i in rows]
            whole = len(rows) == logits.shape[0]
            failed: dict[int, BaseException] = {}
            try:
                result = transform.apply_rows([live.state for live in lives], [generated[i] for i in rows],
                                              logits if whole else logits[rows], failed)
            except REQUEST_ERRORS as exc:  # not one row's failure: every row of the call fails
                failed = dict.fromkeys(range(len(rows)), exc)
                result = logits[rows]
            if whole and result is not logits:
                out = result  # every row, in order, in a tensor of the transform's own
            else:
                if out is None:
                    out = logits.clone()
                out[rows] = result
            finite = torch.isfinite(result).any(dim=-1).tolist()
            for j, (i, live) in enumerate(zip(rows, lives)):
                if j in failed:
                    self._fail(live, failed[j])
                    ended.append(i)
                elif not finite[j]:
                    live.forced = transform.forced_stop(live.state) or "dead_end"
                    ended.append(i)
        if out is None:
            out = logits.clone()
        for i in ended:
            out[i] = self._end_row(logits[i])
        return out

    def finish(self, key: Hashable, generated_ids: Sequence[int] = (), reason: str | None = None) -> str | None:
        """End the request held under ``key``; returns the reason reported (None: no such request)."""
        with self._lock:
            live = self._live.pop(key, None)
        if live is None:
            return None
        generated = [int(t) for t in generated_ids]
        if live.forced is not None and reason != "abort":
            reason = live.forced
            if generated and generated[-1] in self.eos:  # the end-of-sequence token the hook forced
                generated = generated[:-1]
        elif reason is None:
            reason = "stop" if generated and generated[-1] in self.eos else "length"
        if live.pending is not None:
            live.pending.cancel()
        if live.transform is not None:
            try:
                live.transform.finish(live.state, generated, reason)
            except REQUEST_ERRORS as exc:
                logger.error("anydecode: finishing a request failed (%s: %s)", type(exc).__name__, exc)
        self.counts[reason] += 1
        if self.on_finish is not None:
            self.on_finish(key, reason)
        return reason

    def abort(self, key: Hashable) -> None:
        self.finish(key, (), "abort")

    def finish_all(self, reason: str | None = None,
                   generated: Callable[[Hashable], Sequence[int]] | None = None) -> None:
        """End every live request (with ``reason``; ``generated(key)`` gives each one's tokens)."""
        for key in list(self._live):
            self.finish(key, generated(key) if generated is not None else (), reason)

    # -- re-keying -------------------------------------------------------------------------------------------------
    def move(self, source: Hashable, target: Hashable) -> None:
        """The request at ``source`` now lives at ``target``; a request that held ``target`` is aborted."""
        with self._lock:
            live = self._live.pop(source, None)
        if live is None:
            return
        self.abort(target)
        with self._lock:
            self._live[target] = live

    def swap(self, a: Hashable, b: Hashable) -> None:
        with self._lock:
            first, second = self._live.pop(a, None), self._live.pop(b, None)
            if first is not None:
                self._live[b] = first
            if second is not None:
                self._live[a] = second
