"""Model session: a batch of sequences whose KV cache the runtime adapter owns.

Loop-style cores (speculative verification, beam search, DeAL) drive a model only through this contract:

* ``append(tokens)`` feeds a block of ``k`` tokens to every row and returns the next-token logits at each of the
  ``k`` positions, computed in one forward pass. One pass for a whole block is what makes verification cheap.
* ``truncate(length)`` rolls every row back to ``length`` tokens (KV rollback after rejected drafts).
* ``select(rows)`` keeps, reorders or duplicates rows (beam search forks and prunes with it).
* ``fork()`` returns an independent session with the same state (tree branches, lookahead).
* ``append_tree(tokens, parents)`` (optional) feeds a token tree per row in one forward pass with tree attention:
  each node sees the row and its own ancestors only. Speculative tree verification uses it where an adapter has it.

Logits are float32 torch tensors on CPU or on the model's device. Rows always have the same length: the prompt
may be left-padded by the adapter, which hides the padding from the core.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import torch

from .errors import RuntimeAdapterError


class ModelSession(abc.ABC):
    """A batch of token sequences in a model, with a KV cache that can grow, shrink, fork and be reordered."""

    #: size of the logits' last dimension
    vocab_size: int
    #: token ids that end a sequence
    eos_token_ids: frozenset[int]
    #: positions a row can hold, prompt included (llama.cpp: the context size); None: no fixed limit. Adapters cap
    #: ``max_new_tokens`` by it, and an append past it raises ``ContextFull``
    capacity: int | None = None
    #: relative cost ``(c0, c1)`` or ``(c0, c1, cb)`` of a forward over ``w`` tokens per row,
    #: ``c0 + c1 * w + cb * (w > 1)``, as a fixed hint (speculative decoding sizes drafts with it where it must not
    #: depend on timings); None: unknown
    forward_cost: tuple[float, ...] | None = None
    #: the widest block ``append`` is known to compute with the logits one-token steps give (llama.cpp takes other
    #: matrix kernels for wide blocks on some CPUs: AVX-512 ones from 64 tokens); speculative verification feeds no
    #: wider block, so greedy speculation stays exact. None: any width
    max_block: int | None = None

    @property
    @abc.abstractmethod
    def batch_size(self) -> int:
        """Number of rows (sequences)."""

    @property
    @abc.abstractmethod
    def length(self) -> int:
        """Positions held per row, prompt included; rows are equally long (an adapter that left-pads counts
        the padding), and ``truncate`` takes the same units."""

    @abc.abstractmethod
    def tokens(self, row: int = 0) -> list[int]:
        """The token ids of one row, prompt included."""

    @abc.abstractmethod
    def append(self, tokens: torch.Tensor | Sequence[Sequence[int]]) -> torch.Tensor:
        """Feed ``tokens`` (shape ``(batch, k)``, ``k >= 1``) and return logits of shape ``(batch, k, vocab)``.

        ``logits[b, i]`` is the next-token distribution after row ``b``'s token ``i``.
        """

    def step(self, tokens: Sequence[int]) -> torch.Tensor:
        """Append one token per row and return the next-token logits ``(batch, vocab)``.

        The per-token hot path of autoregressive loops; adapters may override it with a leaner call.
        """
        return self.append(torch.tensor(list(tokens), dtype=torch.long).unsqueeze(1))[:, -1]

    @abc.abstractmethod
    def truncate(self, length: int) -> None:
        """Drop every token at position ``>= length`` in all rows (``length`` at least the prompt's)."""

    def select(self, rows: Sequence[int]) -> None:
        """Keep the given rows, in that order; a row may repeat (beam fork) or vanish (prune)."""
        raise RuntimeAdapterError(f"{type(self).__name__} holds one sequence and cannot select rows {list(rows)}")

    def fork(self) -> ModelSession:
        """An independent copy of this session."""
        raise RuntimeAdapterError(f"{type(self).__name__} cannot fork")

    def append_tree(self, tokens: torch.Tensor, parents: torch.Tensor) -> torch.Tensor:
        """Feed a tree of ``k`` tokens per row and return logits ``(batch, k, vocab)`` in one forward pass.

        ``parents[b, i]`` is node ``i``'s parent in row ``b``'s block (``< i``; ``-1``: the row's last token).
        Node ``i`` attends to the row and to its ancestors only, at position ``length + depth(i)``, so
        ``logits[b, i]`` is the next-token distribution after the path to node ``i``. Afterwards each row holds
        ``length + k`` positions, of which only a leading chain of the block (``parents[b, i] == i - 1``) is a
        valid continuation: the caller truncates to at most that.
        """
        raise RuntimeAdapterError(f"{type(self).__name__} has no tree attention")


class TokenRowsSession(ModelSession):
    """A session that keeps each row's token ids as a Python list in ``self.rows`` (toy models, vLLM)."""

    rows: list[list[int]]

    @property
    def batch_size(self) -> int:
        return len(self.rows)

    @property
    def length(self) -> int:
        return len(self.rows[0]) if self.rows else 0

    def tokens(self, row: int = 0) -> list[int]:
        return list(self.rows[row])


def has_tree_attention(session: ModelSession) -> bool:
    """Whether ``session`` overrides ``append_tree``."""
    return type(session).append_tree is not ModelSession.append_tree


def tree_depths(parents: Sequence[int]) -> list[int]:
    """Depth of each node of a parent array (children of ``-1`` have depth 1)."""
    depths: list[int] = []
    for i, p in enumerate(parents):
        if not -1 <= p < i:
            raise ValueError(f"node {i} has parent {p}: parents must come before their children (or be -1)")
        depths.append(1 if p < 0 else depths[p] + 1)
    return depths


def token_rows(tokens: torch.Tensor | Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """:func:`as_token_block` as lists of ints, for sessions that feed the runtime lists: lists are checked as they
    are, without a round trip through a tensor."""
    if isinstance(tokens, torch.Tensor):
        return as_token_block(tokens, batch_size).tolist()
    items = list(tokens)
    if items and (getattr(items[0], "ndim", None) == 0 or not hasattr(items[0], "__len__")):
        items = [items]  # one row, given flat (ints, 0-d tensors or numpy scalars)
    rows = [[int(t) for t in row] for row in items]
    widths = sorted({len(r) for r in rows})
    if len(rows) != batch_size or len(widths) != 1 or widths[0] < 1:
        raise ValueError(f"expected a token block of shape ({batch_size}, k>=1), got {len(rows)} rows of lengths "
                         f"{widths}")
    return rows


def as_token_block(tokens: torch.Tensor | Sequence[Sequence[int]], batch_size: int) -> torch.Tensor:
    """Validate and convert a block of tokens to a ``(batch, k)`` int64 tensor."""
    block = tokens if isinstance(tokens, torch.Tensor) else torch.tensor(tokens, dtype=torch.long)
    if block.dim() == 1:
        block = block.unsqueeze(0)
    if block.dim() != 2 or block.shape[0] != batch_size or block.shape[1] < 1:
        raise ValueError(f"expected a token block of shape ({batch_size}, k>=1), got {tuple(block.shape)}")
    return block.to(torch.long)
