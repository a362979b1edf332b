"""Toy models: explicit next-token tables over a tiny vocabulary, usable as a model session.

A toy model maps a token prefix (prompt included) to a next-token probability vector. Its session holds a batch of
rows and implements the whole model-session contract (append a block, truncate, select rows, fork), so every
loop decoder can be run and checked exactly on it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from anydecode.algorithms.contracts.decoder import DecodeContext
from anydecode.algorithms.contracts.session import TokenRowsSession, as_token_block, tree_depths

Prefix = tuple[int, ...]


class ToyModel:
    """Next-token distributions given explicitly.

    ``table`` maps prefixes to probability vectors; prefixes not in it fall back to ``default`` (a callable of
    the prefix, or a fixed vector). ``seeded(vocab, seed)`` builds a model whose every prefix has its own
    pseudo-random distribution, reproducibly.
    """

    def __init__(self, vocab_size: int, table: Mapping[Prefix, Sequence[float]] | None = None,
                 default: Callable[[Prefix], Sequence[float]] | Sequence[float] | None = None,
                 eos_token_id: int | None = None):
        self.vocab_size = vocab_size
        self.table = {tuple(k): np.asarray(v, dtype=np.float64) for k, v in (table or {}).items()}
        self.default = default
        self.eos_token_id = eos_token_id
        self.calls = 0

    @classmethod
    def seeded(cls, vocab_size: int, seed: int = 0, eos_token_id: int | None = None,
               concentration: float = 1.0) -> ToyModel:
        def dist(prefix: Prefix) -> np.ndarray:
            digest = hashlib.sha256(repr((seed, prefix)).encode()).digest()
            rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
            return rng.dirichlet(np.full(vocab_size, concentration))

        return cls(vocab_size, default=dist, eos_token_id=eos_token_id)

    def probs(self, prefix: Sequence[int]) -> np.ndarray:
        key = tuple(int(t) for t in prefix)
        if key in self.table:
            p = self.table[key]
        elif callable(self.default):
            p = np.asarray(self.default(key), dtype=np.float64)
        elif self.default is not None:
            p = np.asarray(self.default, dtype=np.float64)
        else:
            p = np.full(self.vocab_size, 1.0 / self.vocab_size)
        return p / p.sum()

    def logits(self, prefix: Sequence[int]) -> torch.Tensor:
        with np.errstate(divide="ignore"):
            return torch.from_numpy(np.log(self.probs(prefix)))


class ToySession(TokenRowsSession):
    """A batch of rows in a toy model; logits are float64 log-probabilities."""

    def __init__(self, model: ToyModel, prompts: Sequence[Sequence[int]]):
        self.model = model
        self.vocab_size = model.vocab_size
        self.eos_token_ids = frozenset() if model.eos_token_id is None else frozenset({model.eos_token_id})
        self.rows = [list(p) for p in prompts]
        self.forward_passes = 0

    def prompt_logits(self) -> torch.Tensor:
        return torch.stack([self.model.logits(r) for r in self.rows])

    def append(self, tokens: torch.Tensor | Sequence[Sequence[int]]) -> torch.Tensor:
        block = as_token_block(tokens, self.batch_size)
        self.forward_passes += 1
        out = []
        for b, row in enumerate(self.rows):
            per_pos = []
            for t in block[b].tolist():
                row.append(int(t))
                per_pos.append(self.model.logits(row))
            out.append(torch.stack(per_pos))
        return torch.stack(out)

    def append_tree(self, tokens: torch.Tensor, parents: torch.Tensor) -> torch.Tensor:
        block = as_token_block(tokens, self.batch_size)
        links = as_token_block(parents, self.batch_size)
        self.forward_passes += 1
        out = []
        for b, row in enumerate(self.rows):
            ids, up = block[b].tolist(), links[b].tolist()
            tree_depths(up)  # validates the parents
            per_node = []
            for i in range(len(ids)):
                path, node = [], i
                while node >= 0:
                    path.append(ids[node])
                    node = up[node]
                per_node.append(self.model.logits(row + path[::-1]))
            row.extend(int(t) for t in ids)
            out.append(torch.stack(per_node))
        return torch.stack(out)

    def truncate(self, length: int) -> None:
        for row in self.rows:
            del row[length:]

    def select(self, rows: Sequence[int]) -> None:
        self.rows = [list(self.rows[i]) for i in rows]

    def fork(self) -> ToySession:
        copy = ToySession(self.model, self.rows)
        return copy


def toy_context(model: ToyModel, prompts: Sequence[Sequence[int]], max_new_tokens: int, **kwargs) -> DecodeContext:
    """A decode context on a fresh toy session holding ``prompts``."""
    session = ToySession(model, prompts)
    return DecodeContext(
        vocab_size=model.vocab_size,
        eos_token_ids=session.eos_token_ids,
        runtime="toy",
        session=session,
        prompts=[list(p) for p in prompts],
        prompt_logits=session.prompt_logits(),
        max_new_tokens=max_new_tokens,
        **kwargs,
    )
