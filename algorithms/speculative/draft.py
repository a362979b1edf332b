"""What a drafter proposes (a chain or a tree of tokens, with the distribution they were drawn from) and the
drafter interface the speculative decoders drive."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence

import torch

from ..contracts.errors import ConfigError


@dataclasses.dataclass
class Draft:
    """Draft tokens for one row: a chain, or a tree given by each node's parent (``-1`` is the last committed token).

    ``q[i]`` is the distribution node ``i``'s token was drawn from (float64, after the same temperature, top-k
    and top-p as the target), or ``q is None`` for a deterministic drafter: q is then the one-hot of each token.
    Sibling nodes of a sampled tree are independent draws. Children are tried in node order.

    ``fresh`` says the drafter has just found a new source of drafts (IAD re-aligned with its input): a new phase
    of the request, where drafting may pay again although it has not lately. A fresh draft may be empty (the row's
    draft length was 0): the loop's draft-length controller then drafts from the next step.
    """

    tokens: list[int] = dataclasses.field(default_factory=list)
    parents: list[int] | None = None
    q: torch.Tensor | None = None
    fresh: bool = False

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def is_chain(self) -> bool:
        return self.parents is None or all(p == i - 1 for i, p in enumerate(self.parents))

    def node_parents(self) -> list[int]:
        return list(range(-1, len(self.tokens) - 1)) if self.parents is None else list(self.parents)

    def cut(self, length: int) -> Draft:
        """The first ``length`` nodes (for a tree: the nodes with index < length, which keeps it a tree since
        parents come before their children)."""
        if length >= len(self.tokens):
            return self
        q = None if self.q is None else self.q[:length]
        parents = None if self.parents is None else self.parents[:length]
        return Draft(self.tokens[:length], parents, q, self.fresh)

    def paths(self) -> list[list[int]]:
        """Root-to-leaf node paths, the first-child chain first."""
        parents = self.node_parents()
        has_child = set(parents)
        out = []
        for leaf in range(len(self.tokens)):
            if leaf in has_child:
                continue
            path = [leaf]
            while parents[path[-1]] >= 0:
                path.append(parents[path[-1]])
            out.append(path[::-1])
        return out

    def main_path(self) -> list[int]:
        """The first-child chain from the root."""
        parents = self.node_parents()
        path: list[int] = []
        node = -1
        while True:
            child = next((i for i, p in enumerate(parents) if p == node), None)
            if child is None:
                return path
            path.append(child)
            node = child


class Drafter(abc.ABC):
    """Proposes drafts for a batch of rows.

    Lifecycle, per ``generate`` call: ``start(prompts)``; then each step ``propose(contexts, limits)`` with each
    row's full token ids (prompt and committed tokens) and the most draft tokens it may propose (0 for rows that
    are done), and after verification ``feedback(row, draft, accepted_path)`` with the accepted nodes.
    """

    #: True when drafts are chosen without randomness (q is one-hot and ``Draft.q`` is None)
    deterministic: bool = True
    #: True when drafts may be trees
    tree: bool = False
    #: True when proposing costs little next to a target forward (no model of its own): the loop may then propose at
    #: steps that verify no draft, to learn what drafts would be accepted without paying for their verification
    cheap: bool = False

    def start(self, prompts: Sequence[Sequence[int]]) -> None:
        """A new request begins with these prompts (one per row)."""

    @abc.abstractmethod
    def propose(self, contexts: Sequence[Sequence[int]], limits: Sequence[int]) -> list[Draft]:
        """One draft per row, at most ``limits[row]`` nodes long."""

    def feedback(self, row: int, draft: Draft, accepted_path: Sequence[int]) -> None:
        """The nodes of ``draft`` that the target accepted (a path from the root)."""


class AdaptiveDraftLength:
    """Per-row draft length that follows recent acceptance: longer after a fully accepted draft, shorter after a
    rejection (the schedule transformers calls "heuristic": +2 on full acceptance, -1 otherwise)."""

    def __init__(self, initial: int, maximum: int, adaptive: bool = True, minimum: int = 1):
        if initial < 1:
            raise ConfigError(f"draft length {initial} must be >= 1")
        self.initial = initial
        self.maximum = max(maximum, initial)
        self.minimum = minimum
        self.adaptive = adaptive
        self.lengths: list[int] = []

    def start(self, rows: int) -> None:
        self.lengths = [self.initial] * rows

    def __getitem__(self, row: int) -> int:
        return self.lengths[row]

    def update(self, row: int, drafted: int, accepted: int) -> None:
        if not self.adaptive or drafted == 0:
            return
        if accepted >= drafted >= self.lengths[row]:
            self.lengths[row] = min(self.lengths[row] + 2, self.maximum)
        elif accepted < drafted:
            self.lengths[row] = max(self.lengths[row] - 1, self.minimum)
