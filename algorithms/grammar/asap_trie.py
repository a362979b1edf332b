"""The ASAp trie: visited prefixes with an over-approximation of their expected future grammaticality (EFG).

Park et al., "Grammar-Aligned Decoding" (NeurIPS 2024), section 3. For a prefix ``w`` and a grammar G,
``EFG(w) = sum over continuations c of P(c | w) * 1[w c in L(G)]``. Exact grammar-aligned sampling draws the next
token in proportion to ``P(t | w) * EFG(w t)``. ASAp keeps an estimate ``EFG~`` that starts at 1 and is refined
as prefixes are visited:

* when ``w`` is first visited (expanded), the grammar's mask there gives the allowed mass
  ``m(w) = sum over allowed t of P(t | w)``, and ``EFG~(w) = m(w) - sum over visited children c of
  P(c | w) * (1 - EFG~(w c))`` (an unvisited allowed child counts as 1, a forbidden one as 0, EOS as 1);
* a change of ``EFG~(w)`` is propagated to every ancestor, so the root learns from every sample.

``EFG~ >= EFG`` always (a sound over-approximation) and, until a subtree is evicted, it never increases. Only
visited children are stored, so a node costs memory in proportion to how many of its children were visited, not
to the vocabulary. A node cap evicts least-recently-used subtrees; an evicted child counts as 1 again, which keeps
the estimate sound.
"""

from __future__ import annotations

import collections
import math
import sys
from typing import Any

from ..contracts.errors import ConfigError

#: allowed difference between the probability a node stored and the one the model gives on a later visit; llama.cpp's
#: logits for the same prefix fed in one batch or token by token differ by up to about 0.03 in probability
PROBABILITY_TOLERANCE = 0.1


class TrieNode:
    """A visited prefix: the token that led here, its model probability, and the EFG estimate."""

    __slots__ = ("parent", "token", "p", "efg", "mass", "children", "detached")

    def __init__(self, parent: TrieNode | None, token: int, p: float, detached: bool = False):
        self.parent = parent
        self.token = token
        #: P(token | parent prefix), unmasked, at temperature 1
        self.p = p
        #: the EFG estimate; 1 until expanded
        self.efg = 1.0
        #: allowed mass m(w) once expanded, else None
        self.mass: float | None = None
        self.children: dict[int, TrieNode] = {}
        self.detached = detached

    @property
    def expanded(self) -> bool:
        return self.mass is not None


class ModelMismatchError(ConfigError):
    """The model's probabilities differ from those the ASAp state learned (another model, prompt or settings)."""


class AsapTrie:
    """Visited prefixes of one (prompt, grammar, vocabulary) with their EFG estimates."""

    def __init__(self, max_nodes: int = 1_000_000):
        if max_nodes < 1:
            raise ConfigError(f"asap_max_nodes={max_nodes} must be >= 1")
        self.max_nodes = max_nodes
        self.root = TrieNode(None, -1, 1.0)
        self.nodes = 1
        self.evicted = 0
        self.samples = 0
        self._recent: collections.OrderedDict[TrieNode, None] = collections.OrderedDict()

    # -- walking ---------------------------------------------------------------------------------------------------
    def child(self, node: TrieNode, token: int, p: float) -> TrieNode:
        """The child of ``node`` for ``token``, created with probability ``p`` on the first visit."""
        found = node.children.get(token)
        if found is not None:
            if abs(found.p - p) > PROBABILITY_TOLERANCE:
                raise ModelMismatchError(
                    f"the ASAp state says P(token {token})={found.p:.6f} after this prefix, but the model now gives "
                    f"{p:.6f}: the state was learned with another model, prompt or logits processors. Use a "
                    "different asap_state file, or forget the state (anydecode.algorithms.grammar.forget_asap_state)"
                )
            return found
        made = TrieNode(node, token, p, detached=node.detached)
        node.children[token] = made
        if not made.detached:
            self.nodes += 1
            if self.nodes > self.max_nodes:
                self.evict(max(1, int(self.max_nodes * 0.9)))
        return made

    def touch(self, node: TrieNode) -> None:
        """Mark ``node`` as recently used (eviction removes the least recently used subtrees first)."""
        if node.detached or node is self.root:
            return
        self._recent[node] = None
        self._recent.move_to_end(node)

    def find(self, prefix: list[int] | tuple[int, ...]) -> TrieNode | None:
        node = self.root
        for token in prefix:
            nxt = node.children.get(int(token))
            if nxt is None:
                return None
            node = nxt
        return node

    def efg(self, prefix: list[int] | tuple[int, ...]) -> float:
        """The current EFG estimate of a prefix (1 for a prefix never visited below a visited one)."""
        node = self.root
        for token in prefix:
            nxt = node.children.get(int(token))
            if nxt is None:
                return 1.0
            node = nxt
        return node.efg

    # -- learning --------------------------------------------------------------------------------------------------
    def expand(self, node: TrieNode, allowed_mass: float) -> None:
        """First visit of ``node``: set its allowed mass, recompute its estimate and propagate it to the root."""
        if node.mass is not None:
            return
        mass = float(allowed_mass)
        node.mass = min(max(mass, 0.0), 1.0) if math.isfinite(mass) else 0.0  # NaN logits: nothing is reachable
        value = node.mass - sum(c.p * (1.0 - c.efg) for c in node.children.values())
        self._set(node, value, may_increase=False)

    def _set(self, node: TrieNode, value: float, may_increase: bool) -> None:
        """Set ``EFG~(node)`` and carry the change up to the root (incrementally: O(depth))."""
        old = node.efg
        cap = node.mass if node.mass is not None else 1.0
        new = min(max(value, 0.0), cap)
        if not may_increase:
            new = min(new, old)
        node.efg = new
        child = node
        while old != new:
            parent = child.parent
            if parent is None or parent.mass is None:
                return
            parent_old = parent.efg
            parent_new = parent_old - child.p * (old - new)
            parent_new = min(max(parent_new, 0.0), parent.mass)
            if not may_increase:
                parent_new = min(parent_new, parent_old)
            parent.efg = parent_new
            child, old, new = parent, parent_old, parent_new

    # -- memory ----------------------------------------------------------------------------------------------------
    def evict(self, target: int) -> int:
        """Drop least-recently-used subtrees until at most ``target`` nodes remain; returns how many were dropped.

        An evicted child counts as EFG 1 again in its parent, so the estimate stays an over-approximation.
        """
        dropped = 0
        while self.nodes > target and self._recent:
            node, _ = self._recent.popitem(last=False)
            parent = node.parent
            if node.detached or parent is None:
                continue
            del parent.children[node.token]
            node.parent = None
            size = 0
            stack = [node]
            while stack:
                n = stack.pop()
                n.detached = True
                self._recent.pop(n, None)
                size += 1
                stack.extend(n.children.values())
            self.nodes -= size
            dropped += size
            if parent.mass is not None:
                self._set(parent, parent.efg + node.p * (1.0 - node.efg), may_increase=True)
        self.evicted += dropped
        return dropped

    def memory_bytes(self) -> int:
        """Approximate bytes held by the nodes (objects and child tables)."""
        total = 0
        stack = [self.root]
        node_size = sys.getsizeof(self.root)
        while stack:
            n = stack.pop()
            total += node_size + sys.getsizeof(n.children) + 3 * 24  # three floats
            stack.extend(n.children.values())
        return total + sys.getsizeof(self._recent) + 100 * len(self._recent)

    def stats(self) -> dict[str, Any]:
        return {"nodes": self.nodes, "evicted": self.evicted, "samples": self.samples,
                "root_efg": self.root.efg, "memory_bytes": self.memory_bytes()}

    # -- persistence -----------------------------------------------------------------------------------------------
    def to_records(self) -> dict[str, Any]:
        """Preorder arrays (children by token id): parent index, token, p, efg, mass (-1 when not expanded)."""
        parent: list[int] = []
        token: list[int] = []
        p: list[float] = []
        efg: list[float] = []
        mass: list[float] = []
        stack: list[tuple[TrieNode, int]] = [(self.root, -1)]
        while stack:
            node, up = stack.pop()
            idx = len(parent)
            parent.append(up)
            token.append(node.token)
            p.append(node.p)
            efg.append(node.efg)
            mass.append(-1.0 if node.mass is None else node.mass)
            stack.extend((node.children[t], idx) for t in sorted(node.children, reverse=True))
        return {"parent": parent, "token": token, "p": p, "efg": efg, "mass": mass, "samples": self.samples}

    @classmethod
    def from_records(cls, records: dict[str, Any], max_nodes: int = 1_000_000) -> AsapTrie:
        """Rebuild a trie from :meth:`to_records`; ValueError on inconsistent records."""
        parent, token, p, efg, mass = (records[k] for k in ("parent", "token", "p", "efg", "mass"))
        n = len(parent)
        if not n or any(len(x) != n for x in (token, p, efg, mass)) or parent[0] != -1:
            raise ValueError("node arrays are empty, of different lengths, or do not start at the root")
        trie = cls(max_nodes=max(max_nodes, 1))
        nodes: list[TrieNode] = []
        for i in range(n):
            if i == 0:
                node = trie.root
            else:
                up = int(parent[i])
                if not 0 <= up < i:
                    raise ValueError(f"node {i} names parent {up}, which does not precede it")
                node = TrieNode(nodes[up], int(token[i]), float(p[i]))
                if node.token in nodes[up].children:
                    raise ValueError(f"node {i} repeats token {node.token} under parent {up}")
                nodes[up].children[node.token] = node
                trie._recent[node] = None
            value, m = float(efg[i]), float(mass[i])
            if not (0.0 <= value <= 1.0 and 0.0 <= node.p <= 1.0 and (m == -1.0 or 0.0 <= m <= 1.0)):
                raise ValueError(f"node {i} holds a value outside [0, 1]")
            node.efg = value
            node.mass = None if m == -1.0 else m
            nodes.append(node)
        trie.nodes = n
        trie.samples = int(records.get("samples", 0))
        if trie.nodes > trie.max_nodes:
            trie.evict(trie.max_nodes)
        return trie

    def copy(self) -> AsapTrie:
        return AsapTrie.from_records(self.to_records(), self.max_nodes)
