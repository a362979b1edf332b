"""Grammar logits transforms: grammar-constrained decoding (GCD) and ASAp (adaptive sampling, Park et al. 2024).

Both keep one grammar matcher per row, synchronised with the row's generated tokens, mask the tokens the grammar
forbids, then apply the config's sampling warpers (temperature, top-k, top-p, min-p) to what is left.

* **GCD** samples ``P(t | w)`` restricted to the allowed tokens: always grammatical, but biased against the
  model conditioned on grammaticality.
* **ASAp** targets ``Q(w) proportional to P(w) * 1[w in L(G)]`` (P at temperature 1, unwarped). It reweights each
  allowed token by the EFG estimate of the prefix it leads to: ``Q~(t | w) proportional to P(t | w) * EFG~(w t)``,
  learning EFG~ in a trie shared by every sample of the same prompt and grammar (:mod:`.asap_trie`). The trie
  stores the model's unwarped, unmasked probabilities, so what it learns does not depend on the sampling settings.
  With ``temperature=1`` and no truncation the n-th sample's distribution converges to Q. Other settings are
  applied to the reweighted logits: temperature T samples ``(P(t | w) * EFG~(w t))^(1/T)``, a tempered version of
  the grammar-aligned next-token distribution; top-k and top-p truncate it.

A dead end (no token allowed and the text is not complete) makes every logit ``-inf``; ``forced_stop`` then
reports ``dead_end`` and ASAp records EFG 0 for that prefix.

Rows are transformed together (``apply_rows``; ``apply`` is the one-row case): each row's matcher and trie are
brought up to date in row order, its allowed tokens are read as packed int32 words and, for ASAp, its learned
children as ``(token, log EFG~)`` pairs; then one call to the kernels' dispatcher
(``anydecode.kernels.apply_token_masks``) masks and reweights every row, and the warpers run on the batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ... import kernels
from ..contracts.config import SamplingConfig
from ..contracts.errors import REQUEST_ERRORS
from ..contracts.transform import LogitsTransform, TransformState
from ..sampling.warpers import warp_logits
from .asap_state import AsapStateStore, TrieKey
from .asap_trie import AsapTrie, TrieNode
from .engine import CompiledGrammar, GrammarMatcher, bitmask_words

NEG_INF = float("-inf")


def restrict(logits: torch.Tensor, mask: np.ndarray) -> torch.Tensor:
    """A new tensor: ``logits`` where ``mask`` is set, ``-inf`` elsewhere (numpy on CPU: one single-threaded pass)."""
    if logits.device.type == "cpu" and logits.dtype in (torch.float32, torch.float64):
        values = logits.detach().numpy()
        return torch.from_numpy(np.where(mask, values, NEG_INF).astype(values.dtype, copy=False))
    return torch.where(torch.from_numpy(mask).to(logits.device), logits, NEG_INF)


def allowed_from_words(words: np.ndarray, vocab: int) -> np.ndarray:
    """The bool mask over ``vocab`` logits of packed allowed words (tokens past the words are not allowed)."""
    return np.unpackbits(words.view(np.uint8), count=vocab, bitorder="little").view(np.bool_)


class _Rows:
    """What a batch of rows needs from their per-row preparation: packed masks, ASAp's corrections (CSR), the rows
    that are dead ends and the rows whose transform failed."""

    def __init__(self, rows: int, words: int, failed: dict[int, BaseException] | None):
        self.bitmask = np.zeros((rows, words), dtype=np.int32)  # a dead row keeps no allowed token
        self.dead: list[int] = []
        self.failed = failed
        self.indptr = [0]
        self.tokens: list[int] = []
        self.values: list[torch.Tensor] = []

    def fail(self, index: int, exc: BaseException) -> None:
        if self.failed is None:
            raise exc
        self.failed[index] = exc
        self.bitmask[index] = 0

    def masked(self, masked: torch.Tensor) -> torch.Tensor:
        """Mask and reweight ``masked`` (rows, vocab) in place, in one dispatcher call."""
        bitmask = torch.from_numpy(self.bitmask).to(masked.device)
        if not self.tokens:
            return kernels.apply_token_masks(masked, bitmask)
        return kernels.apply_token_masks(masked, bitmask, None, torch.tensor(self.indptr, dtype=torch.int64),
                                         torch.tensor(self.tokens, dtype=torch.int64), torch.cat(self.values))

    def warped(self, masked: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
        out = warp_logits(masked, config)
        if self.dead:
            out[self.dead] = NEG_INF
        return out


def _own_copy(logits: torch.Tensor) -> torch.Tensor:
    """A contiguous copy the kernels may write in place (a transform never changes the logits it is given)."""
    return logits.detach().clone(memory_format=torch.contiguous_format)


class GrammarRow:
    """One row's grammar state: its matcher and, for ASAp, its place in the trie."""

    __slots__ = ("matcher", "dead_end", "trie", "node", "logp", "finished")

    def __init__(self, matcher: GrammarMatcher, trie: AsapTrie | None = None):
        self.matcher = matcher
        self.dead_end = False
        self.trie = trie
        self.node: TrieNode | None = trie.root if trie is not None else None
        #: log P of the last step (our own tensor), to read the probability of the token that followed
        self.logp: torch.Tensor | None = None
        self.finished = False


class GrammarConstrainedTransform(LogitsTransform):
    """GCD: forbidden tokens get ``-inf``; the sampling warpers apply to the rest."""

    def __init__(self, compiled: CompiledGrammar, config: SamplingConfig):
        self.compiled = compiled
        self.config = config

    def start(self, prompt_ids: Sequence[int]) -> GrammarRow:
        return GrammarRow(self.compiled.matcher())

    def _sync(self, row: GrammarRow, generated_ids: Sequence[int]) -> tuple[int, list[int]]:
        """Bring the matcher to ``generated_ids``: (tokens rolled back, tokens newly consumed).

        A token the grammar forbids (the runtime sampled around the mask) ends the row as a dead end.
        """
        history = row.matcher.history
        generated = [int(t) for t in generated_ids]
        same = 0
        limit = min(len(history), len(generated))
        if limit and history[limit - 1] == generated[limit - 1] and history[:limit] == generated[:limit]:
            same = limit
        else:
            while same < limit and history[same] == generated[same]:
                same += 1
        back = len(history) - same
        if back:
            row.matcher.rollback(back)
        fresh = generated[same:]
        for token in fresh:
            if not row.matcher.consume(token):
                row.dead_end = True
                break
        return back, fresh

    def _dead(self, row: GrammarRow, logits: torch.Tensor) -> torch.Tensor:
        row.dead_end = True
        return torch.full_like(logits, NEG_INF)

    def apply(self, state: Any, generated_ids: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        return self.apply_rows([state], [generated_ids], logits.unsqueeze(0))[0]

    def apply_rows(self, states: Sequence[TransformState], generated: Sequence[Sequence[int]], logits: torch.Tensor,
                   failed: dict[int, BaseException] | None = None) -> torch.Tensor:
        batch = self._rows(len(states), failed)
        for i, (row, generated_ids) in enumerate(zip(states, generated)):
            try:
                self._sync(row, generated_ids)
                words = None if row.dead_end else row.matcher.allowed_bitmask()
                if words is None or not words.any():
                    row.dead_end = True
                    batch.dead.append(i)
                else:
                    batch.bitmask[i] = words
            except REQUEST_ERRORS as exc:
                batch.fail(i, exc)
        return batch.warped(batch.masked(_own_copy(logits)), self.config)

    def _rows(self, rows: int, failed: dict[int, BaseException] | None) -> _Rows:
        return _Rows(rows, bitmask_words(self.compiled.vocabulary.vocab_size), failed)

    def forced_stop(self, state: Any) -> str | None:
        return "dead_end" if state is not None and state.dead_end else None


class AsapTransform(GrammarConstrainedTransform):
    """ASAp: GCD's mask, with each allowed token reweighted by the learned EFG of the prefix it leads to."""

    def __init__(self, compiled: CompiledGrammar, config: SamplingConfig, store: AsapStateStore,
                 max_nodes: int = 1_000_000):
        super().__init__(compiled, config)
        self.store = store
        self.max_nodes = max_nodes

    def key(self, prompt_ids: Sequence[int]) -> TrieKey:
        return TrieKey(tuple(int(t) for t in prompt_ids), f"{self.compiled.spec.format}:{self.compiled.spec.key}",
                       self.compiled.engine, self.compiled.vocabulary.fingerprint)

    def trie(self, prompt_ids: Sequence[int]) -> AsapTrie:
        """The trie this transform learns in for a prompt."""
        return self.store.trie(self.key(prompt_ids), self.max_nodes)

    def start(self, prompt_ids: Sequence[int]) -> GrammarRow:
        row = GrammarRow(self.compiled.matcher(), self.trie(prompt_ids))
        self.store.row_started()
        return row

    def _walk(self, row: GrammarRow, back: int, fresh: list[int]) -> None:
        """Move the row's trie cursor along the tokens the matcher just rolled back and consumed."""
        trie = row.trie
        assert trie is not None
        node = row.node
        for _ in range(back):
            node = node.parent if node is not None else None
            row.logp = None  # the probabilities of an earlier step are gone: stop learning below here
        for token in fresh:
            if node is None or row.logp is None or token in self.compiled.vocabulary.eos_token_ids:
                node = None
                break
            node = trie.child(node, token, math.exp(float(row.logp[token])))
            row.logp = None
        row.node = node

    def model_logprobs(self, logits: torch.Tensor, allowed: np.ndarray) -> torch.Tensor:
        """log P(t | w) as the trie stores it: the model's own distribution, unwarped, unmasked, temperature 1."""
        return torch.log_softmax(logits, dim=-1)

    def apply_rows(self, states: Sequence[TransformState], generated: Sequence[Sequence[int]], logits: torch.Tensor,
                   failed: dict[int, BaseException] | None = None) -> torch.Tensor:
        batch = self._rows(len(states), failed)
        vocab = logits.shape[-1]
        # the default model_logprobs reads no mask: one log-softmax for every row
        logp_all = torch.log_softmax(logits, dim=-1) if self._plain_logprobs() else None
        logps: list[torch.Tensor] = []
        unsure: list[int] = []  # rows whose node may have nothing grammatical left
        for i, (row, generated_ids) in enumerate(zip(states, generated)):
            logp = logits[i] if logp_all is None else logp_all[i]
            try:
                logp, nothing_left = self._prepare(i, row, generated_ids, logits[i], logp, batch, vocab)
                if nothing_left:
                    unsure.append(i)
            except REQUEST_ERRORS as exc:
                batch.fail(i, exc)
            batch.indptr.append(len(batch.tokens))
            logps.append(logp)
        masked = batch.masked(_own_copy(logp_all if logp_all is not None else torch.stack(logps)))
        for i in unsure:
            if not bool(torch.isfinite(masked[i]).any()):
                states[i].dead_end = True
                batch.dead.append(i)
        return batch.warped(masked, self.config)

    def _plain_logprobs(self) -> bool:
        return type(self).model_logprobs is AsapTransform.model_logprobs

    def _prepare(self, index: int, row: GrammarRow, generated_ids: Sequence[int], logits: torch.Tensor,
                 logp: torch.Tensor, batch: _Rows, vocab: int) -> tuple[torch.Tensor, bool]:
        """Bring one row up to date (matcher, trie cursor, the trie's first visit of its node) and put its mask
        and learned corrections into ``batch``; returns the row's log P and whether its node may be a dead end."""
        back, fresh = self._sync(row, generated_ids)
        if back or fresh:
            self._walk(row, back, fresh)
        if row.dead_end:
            batch.dead.append(index)
            return logp, False
        words = row.matcher.allowed_bitmask()
        if not words.any():
            if row.node is not None and row.trie is not None:
                with self.store.lock:
                    row.trie.expand(row.node, 0.0)  # a dead end: nothing grammatical follows this prefix
            row.dead_end = True
            batch.dead.append(index)
            return logp, False
        if not self._plain_logprobs():
            logp = self.model_logprobs(logits, allowed_from_words(words, vocab))
        batch.bitmask[index] = words
        node = row.node
        trie = row.trie
        if node is None or trie is None:
            return logp, False
        with self.store.lock:
            if not node.expanded:
                chosen = logp.detach().cpu().numpy()[allowed_from_words(words, vocab)]
                trie.expand(node, float(np.exp(chosen.astype(np.float64)).sum()))
            trie.touch(node)
            learned = [(t, c.efg) for t, c in node.children.items() if c.efg < 1.0]
            nothing_left = node.efg < 1e-12
        if learned:
            batch.tokens.extend(t for t, _ in learned)
            efg = torch.tensor([v for _, v in learned], dtype=torch.float64)
            batch.values.append(torch.log(efg).to(logp.dtype))  # rounded as the logits are
        row.logp = logp
        return logp, nothing_left

    def finish(self, state: Any, generated_ids: Sequence[int], reason: str) -> None:
        row: GrammarRow = state
        if row is None or row.finished:
            return
        row.finished = True
        if row.trie is not None:
            with self.store.lock:
                if reason == "stop" or reason == "dead_end":
                    row.trie.samples += 1
            self.store.row_finished()
