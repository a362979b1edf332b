"""A depth-bounded suffix trie with occurrence counts, and a bounded corpus of earlier outputs built on it: the
index that suffix drafting (``suffix.py``; Oliaro et al. 2024, "SuffixDecoding") matches contexts in.

Every substring of at most ``max_depth`` tokens of the indexed sequences is a node, and a node counts its
occurrences (start positions; occurrences never cross from one sequence into another). Suffix links (node of
``s`` -> node of ``s[1:]``) are set when a node is created, so a context is matched in amortised O(1) per token and
a draft that reaches the depth bound continues from a shorter context.

Costs, with ``D = max_depth``:

- appending a token to a sequence: O(D) (one node per suffix of the sequence that ends at the new token);
- removing the oldest start position (a sliding window) or a whole sequence: O(D) per token;
- matching the longest suffix of a context: O(D) amortised over the last ``D`` context tokens;
- the most frequent child of a node: O(1), kept up to date as counts grow; where a removal takes an occurrence
  from it, it is found again by a scan of the node's children the next time it is read.

Memory: at most ``1 + D * n`` nodes for ``n`` indexed tokens (natural text comes close: long substrings are
unique), 36 bytes each in flat arrays plus a small dict for each node with two or more children (figures in
docs/drafters.md).
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from array import array
from collections.abc import Iterator, Sequence

from ..contracts.errors import ConfigError

ROOT = 0
#: ``best`` of a node whose most frequent child lost an occurrence: found again (a scan of its children) when read
STALE = -2


class SuffixTrie:
    """Every substring of at most ``max_depth`` tokens of the indexed sequences, with counts.

    Per node: the token on the edge into it, its depth, ``count`` (occurrences of its substring),
    ``cont`` (occurrences followed by a further indexed token: the sum of its children's counts), ``last`` (when
    its latest occurrence was indexed: a stamp that grows with each appended token), its suffix link and its
    most frequent child (``best``: highest count, then latest occurrence). The root is the empty string; its
    count is the number of indexed tokens.

    Sequences are appended through a cursor (``open_cursor`` / ``append``), the list of nodes of the sequence's
    suffixes of length 1..max_depth, shortest first. Occurrences are removed by start position
    (``remove_start``), oldest first: the counts then equal those of a trie built from what is left, and a
    node whose count falls to zero is freed for reuse.
    """

    def __init__(self, max_depth: int):
        if max_depth < 2:
            raise ConfigError(f"suffix trie max_depth={max_depth} must be >= 2 (a match and one draft token)")
        self.max_depth = int(max_depth)
        self.token = array("i", [-1])
        self.depth = array("i", [0])
        self.count = array("i", [0])
        self.cont = array("i", [0])
        self.last = array("q", [0])
        self.link = array("i", [-1])
        self.best = array("i", [-1])
        #: the only child of a node, or -1; a node with two or more children keeps them in ``more`` (token -> node)
        self.only_child = array("i", [-1])
        self.more: dict[int, dict[int, int]] = {}
        self.free: list[int] = []
        #: slots in use in the arrays (live nodes and freed ones); the arrays hold spare capacity beyond
        self.size = 1
        self.stamp = 0

    # -- reading ---------------------------------------------------------------------------------------------------
    @property
    def nodes(self) -> int:
        """Live nodes, the root included."""
        return self.size - len(self.free)

    @property
    def indexed_tokens(self) -> int:
        return self.count[ROOT]

    def child(self, node: int, token: int) -> int:
        """The child of ``node`` along ``token``, or -1."""
        many = self.more.get(node)
        if many is not None:
            return many.get(token, -1)
        c = self.only_child[node]
        return c if c >= 0 and self.token[c] == token else -1

    def children(self, node: int) -> Iterator[tuple[int, int]]:
        """``(token, child)`` pairs of ``node``."""
        many = self.more.get(node)
        if many is not None:
            yield from many.items()
        elif self.only_child[node] >= 0:
            yield self.token[self.only_child[node]], self.only_child[node]

    def find(self, tokens: Sequence[int]) -> int:
        """The node of ``tokens`` (the root for an empty sequence), or -1 where it is not indexed."""
        if len(tokens) > self.max_depth:
            return -1
        node = ROOT
        for t in tokens:
            node = self.child(node, int(t))
            if node < 0:
                return -1
        return node

    def count_of(self, tokens: Sequence[int]) -> int:
        """Occurrences of ``tokens`` in the indexed sequences (0 where absent or longer than ``max_depth``)."""
        node = self.find(tokens)
        return self.count[node] if node >= 0 else 0

    def match(self, context: Sequence[int]) -> int:
        """The node of the longest suffix of ``context`` (at most ``max_depth`` tokens) that is indexed.

        Reads the last ``max_depth`` tokens, extending the match by one token where the trie has it and
        following suffix links where it has not (matching statistics): amortised O(max_depth).
        """
        depth, link, depth_cap = self.depth, self.link, self.max_depth
        node = ROOT
        for t in context[-depth_cap:]:
            t = int(t)
            while True:
                if depth[node] < depth_cap:
                    c = self.child(node, t)
                    if c >= 0:
                        node = c
                        break
                if node == ROOT:
                    break
                node = link[node]
        return node

    def with_continuation(self, node: int) -> int:
        """``node`` or its longest suffix whose substring is followed by an indexed token somewhere (the root,
        whose continuations are single tokens, where none is)."""
        while node != ROOT and self.cont[node] == 0:
            node = self.link[node]
        return node

    def substring_counts(self) -> dict[tuple[int, ...], tuple[int, int]]:
        """``{substring: (count, cont)}`` for every node but the root (for tests and debugging: O(nodes))."""
        out: dict[tuple[int, ...], tuple[int, int]] = {}
        stack: list[tuple[int, tuple[int, ...]]] = [(ROOT, ())]
        while stack:
            node, path = stack.pop()
            for t, c in self.children(node):
                key = path + (t,)
                out[key] = (self.count[c], self.cont[c])
                stack.append((c, key))
        return out

    # -- writing ---------------------------------------------------------------------------------------------------
    def _grow(self, need: int) -> None:
        """Make room for ``need`` more fresh nodes (capacity doubles, so growth is amortised O(1) per node)."""
        capacity = len(self.token)
        if self.size + need <= capacity:
            return
        more = max(need, capacity)
        for arr, fill in ((self.token, -1), (self.depth, 0), (self.count, 0), (self.cont, 0), (self.link, -1),
                          (self.best, -1), (self.only_child, -1)):
            arr.extend(array("i", [fill]) * more)
        self.last.extend(array("q", [0]) * more)

    def _alloc(self, n: int) -> list[int]:
        """Ids for ``n`` new nodes: freed ones first (``remove_start`` leaves them reset), then fresh ones."""
        free = self.free
        take = min(n, len(free))
        ids = free[len(free) - take:]
        del free[len(free) - take:]
        fresh = n - take
        if fresh:
            self._grow(fresh)
            ids.extend(range(self.size, self.size + fresh))
            self.size += fresh
        return ids

    def _attach(self, parent: int, token: int, node: int) -> None:
        many = self.more.get(parent)
        if many is not None:
            many[token] = node
        elif self.only_child[parent] < 0:
            self.only_child[parent] = node
        else:
            other = self.only_child[parent]
            self.more[parent] = {self.token[other]: other, token: node}
            self.only_child[parent] = -1

    def _detach(self, parent: int, token: int) -> None:
        many = self.more.get(parent)
        if many is None:
            self.only_child[parent] = -1
            return
        del many[token]
        if len(many) == 1:  # back to the compact one-child form
            ((_t, c),) = many.items()
            del self.more[parent]
            self.only_child[parent] = c

    def best_child(self, node: int) -> int:
        """The most frequent child of ``node`` (the latest on a tie), or -1 where it has none."""
        b = self.best[node]
        if b != STALE:
            return b
        count, last = self.count, self.last
        b, key = -1, (0, 0)
        for _t, c in self.children(node):
            k = (count[c], last[c])
            if b < 0 or k > key:
                b, key = c, k
        self.best[node] = b
        return b

    def open_cursor(self) -> list[int]:
        """A cursor for a new sequence (it has no suffixes yet)."""
        return []

    def append(self, cursor: list[int], token: int) -> list[int]:
        """Index ``token`` at the end of the sequence whose cursor is given; returns the new cursor.

        Counts one more occurrence of each suffix of the sequence that ends at the new token (at most
        ``max_depth`` of them, one node each). Where the suffix of length k is new, so are the longer ones: those
        nodes are made in one allocation, each linked to the one a token shorter.
        """
        token = int(token)
        if token < 0:
            raise ValueError(f"token ids must be >= 0, got {token}")
        self.stamp += 1
        stamp = self.stamp
        count, cont, last, best = self.count, self.cont, self.last, self.best
        count[ROOT] += 1
        parents = [ROOT]
        parents.extend(cursor[: self.max_depth - 1])  # a node at max_depth gets no children
        new: list[int] = []
        # the suffixes seen before: one more occurrence each
        for parent in parents:
            c = self.child(parent, token)
            if c < 0:
                break
            count[c] += 1
            cont[parent] += 1
            last[c] = stamp
            b = best[parent]
            # c now has the latest occurrence: it leads unless a sibling has a strictly higher count
            if b != STALE and (b < 0 or b == c or count[c] >= count[b]):
                best[parent] = c
            new.append(c)
        rest = len(parents) - len(new)
        if rest:
            ids = self._alloc(rest)
            depth0 = len(new) + 1
            link, tok, depth, only_child, more = self.link, self.token, self.depth, self.only_child, self.more
            prev = new[-1] if new else ROOT
            a = ids[0]
            if ids[-1] - a == rest - 1 and ids == list(range(a, a + rest)):  # fresh slots: fill them in bulk
                end = a + rest
                tok[a:end] = array("i", [token]) * rest
                depth[a:end] = array("i", range(depth0, depth0 + rest))
                count[a:end] = array("i", [1]) * rest
                last[a:end] = array("q", [stamp]) * rest
                link[a:end] = array("i", [prev]) + array("i", range(a, end - 1))
            else:
                for i, c in enumerate(ids):
                    tok[c], depth[c], count[c], last[c], link[c] = token, depth0 + i, 1, stamp, prev
                    prev = c
            for parent, c in zip(parents[len(new):], ids):
                if only_child[parent] < 0 and parent not in more:  # most often: the parent is a new leaf
                    only_child[parent] = c
                else:
                    self._attach(parent, token, c)
                cont[parent] += 1
                b = best[parent]
                if b == -1 or (b >= 0 and count[b] <= 1):
                    best[parent] = c
            new.extend(ids)
        return new

    def extend(self, cursor: list[int], tokens: Sequence[int]) -> list[int]:
        for t in tokens:
            cursor = self.append(cursor, t)
        return cursor

    def remove_start(self, tokens: Sequence[int]) -> None:
        """Remove the occurrences that start at one position: ``tokens`` is the indexed sequence from that
        position on (only its first ``max_depth`` tokens are read).

        Remove start positions oldest first (FIFO, as a sliding window or an evicted sequence does): the node of
        each remaining substring then still holds its latest occurrence, so ``last`` stays exact. (Where several
        sequences grew at once, as a corpus's open outputs do, an evicted one may have held a node's latest
        occurrence; ``last`` then keeps that stamp, which only breaks count ties.)
        """
        count, cont, best, only_child, token = self.count, self.cont, self.best, self.only_child, self.token
        count[ROOT] -= 1
        node = ROOT
        for t in tokens[: self.max_depth]:
            t = int(t)
            c = self.child(node, t)
            if c < 0:
                raise ValueError(f"removing an occurrence that is not indexed: token {t} under node {node}")
            count[c] -= 1
            cont[node] -= 1
            if best[node] == c:
                # rescanning here would cost a scan of the children at every eviction (the root has thousands)
                best[node] = STALE
            if count[c] == 0:
                # this was its only occurrence, so the rest of the path is a chain of nodes held by it alone:
                # free them all (each has at most one child, the next one)
                self._detach(node, t)
                while c >= 0:
                    below = only_child[c]
                    token[c] = only_child[c] = best[c] = -1
                    count[c] = cont[c] = 0
                    self.free.append(c)
                    c = below
                return
            node = c

    def remove_sequence(self, tokens: Sequence[int]) -> None:
        """Remove a whole indexed sequence (every start position)."""
        for j in range(len(tokens)):
            self.remove_start(tokens[j: j + self.max_depth])


class SlidingSuffixTrie:
    """One growing sequence (a request's prompt and output) indexed over its latest ``window`` tokens."""

    def __init__(self, max_depth: int, window: int):
        if window <= max_depth:
            raise ConfigError(f"the indexed window ({window} tokens) must be longer than max_depth={max_depth}")
        self.trie = SuffixTrie(max_depth)
        self.window = int(window)
        self.cursor: list[int] = []
        #: the indexed tokens; ``tokens[head:]`` is the window
        self.tokens: list[int] = []
        self.head = 0
        #: tokens ever appended (the position the next one will take)
        self.length = 0

    def extend(self, tokens: Sequence[int]) -> None:
        if len(tokens) > self.window:  # older tokens would be evicted at once: never index them
            skipped = len(tokens) - self.window
            self.length += skipped
            tokens = tokens[skipped:]
            if self.tokens:
                self._evict(len(self.tokens) - self.head)
                self.cursor = []
        trie = self.trie
        for t in tokens:
            t = int(t)
            self.cursor = trie.append(self.cursor, t)
            self.tokens.append(t)
            self.length += 1
            if len(self.tokens) - self.head > self.window:
                self._evict(1)

    def _evict(self, n: int) -> None:
        depth = self.trie.max_depth
        for _ in range(n):
            self.trie.remove_start(self.tokens[self.head: self.head + depth])
            self.head += 1
        if self.head > self.window:  # drop the evicted prefix now and then (amortised O(1) per token)
            del self.tokens[: self.head]
            self.head = 0

    @property
    def indexed(self) -> list[int]:
        return self.tokens[self.head:]

    def deepest(self) -> int:
        """The node of the longest indexed suffix of the sequence (the root while empty)."""
        return self.cursor[-1] if self.cursor else ROOT


@dataclasses.dataclass
class _Entry:
    tokens: list[int]
    cursor: list[int] | None  # None once closed


class SuffixCorpus:
    """Earlier outputs of one model, shared by its requests: a suffix trie over at most ``max_outputs`` outputs
    and ``max_tokens`` tokens, the oldest output evicted first (its counts removed, its nodes freed).

    One corpus per model (token ids mean nothing across tokenizers); whoever holds the model owns it. An output
    is indexed as it is generated (``open``, ``extend``, ``close``), so it helps the next requests even where the
    runtime never says that a request ended. Thread-safe: every call holds the corpus lock, and drafters read
    the trie under ``lock``.
    """

    def __init__(self, max_depth: int = 24, max_tokens: int = 32768, max_outputs: int = 1024):
        if max_tokens < 1 or max_outputs < 1:
            raise ConfigError(f"suffix corpus bounds max_tokens={max_tokens}, max_outputs={max_outputs} "
                              "must be >= 1")
        self.trie = SuffixTrie(max_depth)
        self.max_tokens = int(max_tokens)
        self.max_outputs = int(max_outputs)
        self.entries: collections.OrderedDict[int, _Entry] = collections.OrderedDict()
        self.tokens = 0
        #: outputs holding at least one token
        self.filled = 0
        self.lock = threading.RLock()
        self._next = 0

    @property
    def max_depth(self) -> int:
        return self.trie.max_depth

    def open(self) -> int:
        """A new output, empty so far (it counts against ``max_outputs`` from its first token on)."""
        with self.lock:
            key = self._next
            self._next += 1
            self.entries[key] = _Entry([], self.trie.open_cursor())
            return key

    def extend(self, key: int, tokens: Sequence[int]) -> int:
        """Append tokens to an open output; returns how many were indexed (0 once it was evicted or closed; fewer
        where the output alone reached ``max_tokens``). Evicts the oldest other outputs to stay in bounds."""
        with self.lock:
            entry = self.entries.get(key)
            if entry is None or entry.cursor is None or not len(tokens):
                return 0
            if not entry.tokens:
                while self.filled >= self.max_outputs and self._evict_oldest(key):
                    pass
            while self.tokens + len(tokens) > self.max_tokens and self._evict_oldest(key):
                pass
            tokens = [int(t) for t in tokens[: self.max_tokens - self.tokens]]
            if not tokens:
                return 0
            if not entry.tokens:
                self.filled += 1
            entry.cursor = self.trie.extend(entry.cursor, tokens)
            entry.tokens.extend(tokens)
            self.tokens += len(tokens)
            return len(tokens)

    def close(self, key: int) -> None:
        """No more tokens for this output (an empty one is dropped)."""
        with self.lock:
            entry = self.entries.get(key)
            if entry is None:
                return
            entry.cursor = None
            if not entry.tokens:
                del self.entries[key]

    def add(self, tokens: Sequence[int]) -> None:
        """Index one whole output."""
        key = self.open()
        self.extend(key, tokens)
        self.close(key)

    def _evict_oldest(self, keep: int) -> bool:
        """Evict the oldest output holding tokens other than ``keep``; False where there is none."""
        for key, entry in self.entries.items():
            if key != keep and entry.tokens:
                del self.entries[key]
                self.trie.remove_sequence(entry.tokens)
                self.tokens -= len(entry.tokens)
                self.filled -= 1
                return True
        return False

    def outputs(self) -> list[list[int]]:
        """The outputs held, oldest first (empty open ones left out)."""
        with self.lock:
            return [list(e.tokens) for e in self.entries.values() if e.tokens]
