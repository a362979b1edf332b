"""ADED drafting (Liu et al. 2024, "Adaptive Draft-Verification for Efficient LLM Decoding"): a tri-gram table
that stands in for the model, updated online from the tokens the model actually produced, and draft trees built
best-first with a PUCT score that balances the table's probabilities against what verification accepted.

No trained weights. Drafts are deterministic (q is one-hot), so tree verification is lossless in both greedy and
sampling modes.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections import defaultdict
from collections.abc import Sequence

from ..contracts.config import DecoderConfig, config_field
from .draft import Draft, Drafter

Pair = tuple[int, int]


@dataclasses.dataclass(frozen=True)
class ADEDConfig(DecoderConfig):
    """Settings of the ADED drafter."""

    owner = "drafter"

    max_nodes: int = config_field(12, ge=1, help="draft tree size (tokens verified per step)")
    branching: int = config_field(2, ge=1, help="most children per tree node")
    max_depth: int = config_field(8, ge=1, help="deepest draft path")
    exploration: float = config_field(1.0, ge=0.0, help="PUCT exploration constant c")
    min_value: float = config_field(0.02, ge=0.0, le=1.0, help="paths whose estimated acceptance falls below this end")
    corpus_ids: tuple[int, ...] | None = config_field(None, help="token ids to seed the tri-gram table with")
    persist: bool = config_field(True, help="keep learning in one table across requests to the same model")


class TrigramTable:
    """Counts of ``c`` after ``(a, b)`` (and of ``c`` after ``b`` as a fallback), plus verification statistics."""

    def __init__(self) -> None:
        self.trigram: dict[Pair, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self.bigram: dict[int, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self.visits: dict[tuple[int, int, int], int] = defaultdict(int)
        self.wins: dict[tuple[int, int, int], int] = defaultdict(int)

    def add(self, tokens: Sequence[int], start: int = 0) -> None:
        """Count the n-grams ending at positions ``>= start``."""
        for i in range(max(start, 1), len(tokens)):
            c = int(tokens[i])
            self.bigram[int(tokens[i - 1])][c] += 1
            if i >= 2:
                self.trigram[(int(tokens[i - 2]), int(tokens[i - 1]))][c] += 1

    def prior(self, a: int, b: int) -> dict[int, float]:
        """P(c | a, b) from the table, falling back to P(c | b)."""
        counts = self.trigram.get((a, b)) or self.bigram.get(b)
        if not counts:
            return {}
        total = sum(counts.values())
        return {c: n / total for c, n in counts.items()}

    def ranked(self, a: int, b: int, exploration: float, limit: int) -> list[tuple[int, float, float]]:
        """Children ``(c, value, puct)`` of ``(a, b)``, best PUCT first.

        ``PUCT(c) = Q(c) + exploration * P(c) * sqrt(N) / (1 + n(c))`` with ``Q`` the share of proposals of
        ``c`` here that verification accepted (the prior while never proposed), ``n(c)`` those proposals and
        ``N`` their sum over children. ``value`` estimates the acceptance probability used to grow the tree.
        """
        prior = self.prior(a, b)
        if not prior:
            return []
        total_visits = sum(self.visits.get((a, b, c), 0) for c in prior)
        scored = []
        for c, p in prior.items():
            n = self.visits.get((a, b, c), 0)
            q = self.wins.get((a, b, c), 0) / n if n else p
            puct = q + exploration * p * math.sqrt(total_visits + 1) / (1 + n)
            value = (q * n + p) / (n + 1)
            scored.append((c, value, puct))
        scored.sort(key=lambda t: -t[2])
        return scored[:limit]


class ADEDDrafter(Drafter):
    """Tree drafts from a tri-gram table that learns from the target's outputs during decoding."""

    tree = True
    cheap = True

    def __init__(self, config: ADEDConfig, table: TrigramTable | None = None):
        self.config = config
        self.table = table if table is not None else TrigramTable()
        if config.corpus_ids:
            self.table.add(list(config.corpus_ids))
        self.seen: list[int] = []
        self.roots: list[tuple[int, int]] = []

    def start(self, prompts: Sequence[Sequence[int]]) -> None:
        self.seen = []
        self.roots = [(0, 0)] * len(prompts)
        for prompt in prompts:
            self.table.add(prompt)
            self.seen.append(len(prompt))

    def _tree(self, context: Sequence[int], budget: int) -> Draft:
        cfg = self.config
        tokens: list[int] = []
        parents: list[int] = []
        if len(context) < 2:
            return Draft()
        # best-first growth: a candidate's priority is the estimated probability that its whole path is accepted
        heap: list[tuple[float, int, int, int, int, int]] = []
        counter = 0

        def push_children(parent: int, a: int, b: int, value: float, depth: int) -> None:
            nonlocal counter
            if depth >= min(cfg.max_depth, budget):
                return
            for c, v, _puct in self.table.ranked(a, b, cfg.exploration, cfg.branching):
                path_value = value * v
                if path_value >= cfg.min_value:
                    heapq.heappush(heap, (-path_value, counter, parent, b, c, depth + 1))
                    counter += 1

        push_children(-1, int(context[-2]), int(context[-1]), 1.0, 0)
        while heap and len(tokens) < budget:
            neg_value, _, parent, b, c, depth = heapq.heappop(heap)
            tokens.append(c)
            parents.append(parent)
            push_children(len(tokens) - 1, b, c, -neg_value, depth)
        return Draft(tokens, parents)

    def propose(self, contexts: Sequence[Sequence[int]], limits: Sequence[int]) -> list[Draft]:
        out = []
        for row, (context, limit) in enumerate(zip(contexts, limits)):
            # learn from what the target produced since the last step (the online update of the "LLM representative")
            self.table.add(context, start=self.seen[row])
            self.seen[row] = len(context)
            if len(context) >= 2:
                self.roots[row] = (int(context[-2]), int(context[-1]))
            budget = min(limit, self.config.max_nodes)
            out.append(self._tree(context, budget) if budget > 0 else Draft())
        return out

    def feedback(self, row: int, draft: Draft, accepted_path: Sequence[int]) -> None:
        if not len(draft):
            return
        # each proposed edge is a visit; edges on the accepted path are wins (the Q of PUCT)
        parents = draft.node_parents()
        accepted = set(accepted_path)
        for node, token in enumerate(draft.tokens):
            chain: list[int] = []
            cur = parents[node]
            while cur >= 0 and len(chain) < 2:
                chain.append(draft.tokens[cur])
                cur = parents[cur]
            before = list(self.roots[row]) + chain[::-1]
            a, b = before[-2], before[-1]
            self.table.visits[(a, b, token)] += 1
            if node in accepted:
                self.table.wins[(a, b, token)] += 1
