"""Suffix drafting (Oliaro et al. 2024, "SuffixDecoding: extreme speculative decoding for emerging AI
applications"): match the longest suffix of the context in a suffix trie of the request's own tokens (prompt and
output) and, optionally, of the model's earlier outputs, and propose the most frequent continuation.

Drafts are deterministic (q is one-hot), so verification is lossless in greedy and sampling modes. Each draft
token carries an estimate of the probability that the path up to it is accepted: the product of the empirical
branch probabilities ``count(child) / count(continued occurrences of the node)``. A chain follows the most
frequent child; a tree (``tree=True``) is grown best-first by that path probability, as SuffixDecoding builds its
speculation trees. Growth stops where the path probability falls below ``min_prob``, at ``max_spec_factor``
times the match length (SuffixDecoding's ``MAX_SPEC = alpha * p``), at ``max_draft_tokens`` and at the loop's
limit. Unset, ``tree`` and ``max_spec_factor`` follow the cost of a further token in a verified block: where it is
cheap (transformers), a tree and up to 4 tokens per matched token; elsewhere a chain and SuffixDecoding's 1.
A draft that reaches a node without indexed continuation (the depth bound, or the end of a sequence)
goes on from the longest shorter context that has one (the node's suffix link), as a variable-order Markov model
backs off.

Both tries are matched and drafted from; the draft with the higher score (the sum of its nodes' path
probabilities: the expected number of accepted tokens) is proposed, the request's own on a tie. This is the
choice SuffixDecoding makes between its per-request and global trees.

Costs per step: O(max_depth) to index each new token (and to evict the oldest beyond the window), O(max_depth)
to match in the corpus, O(1) per chain draft token; a tree node costs a scan of its trie node's children.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections.abc import Sequence

from ..contracts.config import DecoderConfig, config_field
from ..contracts.errors import ConfigError
from .draft import Draft, Drafter
from .schedule import CHEAP_BLOCK_TOKEN, cheap_block_tokens
from .suffix_tree import ROOT, SlidingSuffixTrie, SuffixCorpus, SuffixTrie


@dataclasses.dataclass(frozen=True)
class SuffixConfig(DecoderConfig):
    """Settings of the suffix (SuffixDecoding) drafter."""

    owner = "drafter"

    max_depth: int = config_field(24, ge=2, le=256, help="longest substring indexed; a match is at most "
                                                          "max_depth - 1 tokens")
    max_spec_factor: float | None = config_field(
        None, gt=0.0, help="draft at most this many tokens per matched token (SuffixDecoding's alpha; default: 1.0, "
                           "or 4.0 where a further token in a verified block is known to be cheap: transformers)")
    max_draft_tokens: int = config_field(32, ge=1, help="most tokens on a draft path")
    min_prob: float = config_field(0.1, ge=0.0, le=1.0, help="stop a draft path where its estimated acceptance "
                                                             "probability falls below this")
    min_match: int = config_field(1, ge=1, help="shortest matched context a draft may start or continue from")
    max_indexed_tokens: int = config_field(4096, ge=3, help="per request: the latest prompt and output tokens "
                                                            "indexed (a sliding window)")
    tree: bool | None = config_field(
        None, help="propose a tree of the most probable branches instead of a chain (default: where a further token "
                   "in a verified block is known to be cheap: transformers)")
    max_nodes: int = config_field(16, ge=1, help="tree mode: most draft nodes per step (the budget a row starts "
                                                 "from, and falls back to after a rejection)")
    max_grown_nodes: int = config_field(32, ge=1, help="tree mode: after a step whose main path was accepted whole, "
                                                       "the node budget doubles, up to this (at least max_nodes)")
    use_corpus: bool = config_field(True, help="also draft from, and add outputs to, the model's corpus of earlier "
                                               "outputs (where the caller gives one)")
    corpus_max_tokens: int = config_field(32768, ge=1, help="corpus bound: most output tokens held (oldest "
                                                            "output evicted first)")
    corpus_max_outputs: int = config_field(1024, ge=1, help="corpus bound: most outputs held")

    def validate(self) -> None:
        super().validate()
        if self.min_match >= self.max_depth:
            raise ConfigError(f"min_match={self.min_match} must be < max_depth={self.max_depth} (a match leaves "
                              "room for one draft token)")
        if self.max_indexed_tokens <= self.max_depth:
            raise ConfigError(f"max_indexed_tokens={self.max_indexed_tokens} must be > max_depth={self.max_depth}")

    def make_corpus(self) -> SuffixCorpus:
        """A corpus with these bounds (the caller keeps one per model and passes it to every drafter)."""
        return SuffixCorpus(self.max_depth, self.corpus_max_tokens, self.corpus_max_outputs)


@dataclasses.dataclass
class Speculation:
    """A draft grown from one trie: tokens, parents (-1: the last context token), each node's path probability,
    the matched context length and where it came from (``"own"`` or ``"corpus"``)."""

    tokens: list[int] = dataclasses.field(default_factory=list)
    parents: list[int] = dataclasses.field(default_factory=list)
    probs: list[float] = dataclasses.field(default_factory=list)
    match_length: int = 0
    source: str = ""

    @property
    def score(self) -> float:
        """Expected accepted tokens, if each node is accepted with its path probability."""
        return math.fsum(self.probs)

    def draft(self, tree: bool) -> Draft:
        return Draft(list(self.tokens), list(self.parents) if tree else None)


def _draft_cap(match_length: int, factor: float, most: int) -> int:
    # a small epsilon so that e.g. 0.1 * 30 gives 3, not 2
    return max(0, min(most, math.floor(factor * match_length + 1e-9)))


def _continue_from(trie: SuffixTrie, node: int, min_match: int) -> int:
    """``node``, or its longest suffix with an indexed continuation; -1 where that is shorter than min_match."""
    node = trie.with_continuation(node)
    return node if node != ROOT and trie.depth[node] >= min_match else -1


def speculate_chain(trie: SuffixTrie, node: int, cap: int, min_prob: float, min_match: int) -> Speculation:
    """Follow the most frequent child from ``node`` (which has a continuation) for up to ``cap`` tokens while the
    path probability stays at or above ``min_prob``."""
    spec = Speculation(match_length=trie.depth[node])
    count, cont, token = trie.count, trie.cont, trie.token
    prob = 1.0
    while len(spec.tokens) < cap and node >= 0:
        c = trie.best_child(node)
        p = prob * count[c] / cont[node]
        if p < min_prob:
            break
        spec.parents.append(len(spec.tokens) - 1)
        spec.tokens.append(token[c])
        spec.probs.append(p)
        prob = p
        node = _continue_from(trie, c, min_match)
    return spec


def speculate_tree(trie: SuffixTrie, node: int, budget: int, cap: int, min_prob: float,
                   min_match: int) -> Speculation:
    """Grow a draft tree best-first by path probability: at most ``budget`` nodes, paths at most ``cap`` deep,
    every node's path probability at least ``min_prob``. Each node's first child is its most probable one, so
    the tree's first-child chain is a prefix of ``speculate_chain``'s draft."""
    spec = Speculation(match_length=trie.depth[node])
    count, cont, last, token = trie.count, trie.cont, trie.last, trie.token
    heap: list[tuple[float, int, int, int, int]] = []  # (-path prob, order, trie child, draft parent, depth)
    order = 0

    def push_children(at: int, prob: float, parent: int, depth: int) -> None:
        nonlocal order
        if depth >= cap:
            return
        total = cont[at]
        # at most prob / min_prob children reach min_prob (their probabilities sum to at most prob)
        ratio = prob / min_prob if min_prob > 0 else math.inf  # inf too for a subnormal min_prob
        room = budget if ratio >= budget else int(ratio + 1e-9)
        kids = heapq.nlargest(room, ((count[c], last[c], c) for _t, c in trie.children(at)))
        for n, _last, c in kids:
            p = prob * n / total
            if p < min_prob:
                break  # sorted by count: the rest are less probable
            heapq.heappush(heap, (-p, order, c, parent, depth + 1))
            order += 1

    push_children(node, 1.0, -1, 0)
    while heap and len(spec.tokens) < budget:
        neg_p, _order, c, parent, depth = heapq.heappop(heap)
        spec.tokens.append(token[c])
        spec.parents.append(parent)
        spec.probs.append(-neg_p)
        nxt = _continue_from(trie, c, min_match)
        if nxt >= 0:
            push_children(nxt, -neg_p, len(spec.tokens) - 1, depth)
    return spec


@dataclasses.dataclass
class _Row:
    own: SlidingSuffixTrie
    prompt_length: int
    seen: int
    entry: int | None  # this row's output in the corpus
    #: tree mode: this step's node budget (``max_nodes``, doubled after each draft accepted whole)
    budget: int = 0


class SuffixDrafter(Drafter):
    """Drafts the most frequent continuation of the context's longest suffix match, from a suffix trie of the
    request's own tokens and (optionally) a corpus of the model's earlier outputs.

    ``corpus``: a ``SuffixCorpus`` shared by the requests to one model (see ``SuffixConfig.make_corpus``), or
    None. Each row's output is added to it as it is generated; ``finish`` closes those outputs.
    """

    deterministic = True
    cheap = True

    #: trees are the default where a further token in a verified block costs less than this share of a forward
    CHEAP_BLOCK_TOKEN = CHEAP_BLOCK_TOKEN
    #: ``max_spec_factor`` by default: SuffixDecoding's alpha, and a looser cap where block tokens are cheap
    SPEC_FACTOR, CHEAP_SPEC_FACTOR = 1.0, 4.0

    def __init__(self, config: SuffixConfig, corpus: SuffixCorpus | None = None,
                 block_token_cost: float | None = None):
        """``block_token_cost``: what one more token in a verified block costs, as a share of a forward pass (the
        session's ``forward_cost`` hint); it decides ``tree=None`` and ``max_spec_factor=None``. A tree's side
        branches are verified in the same block as its main chain, so they pay only where block tokens are cheap;
        where a block token costs a step of its own (llama.cpp) or the engine verifies a chain of fixed length
        (vLLM), the chain is proposed."""
        self.config = config
        cheap = cheap_block_tokens(block_token_cost)
        self.tree = config.tree if config.tree is not None else cheap
        #: the draft cap per matched token: a guard against the over-confident counts of short matches, which costs
        #: little to loosen where a further block token costs little
        self.spec_factor = (config.max_spec_factor if config.max_spec_factor is not None
                            else self.CHEAP_SPEC_FACTOR if cheap else self.SPEC_FACTOR)
        self.corpus = corpus if config.use_corpus else None
        self.rows: list[_Row] = []
        #: the speculation proposed for each row at the last step (None: nothing matched)
        self.last: list[Speculation | None] = []
        #: per row, text indexed before the prompt (predicted outputs: the request's prediction)
        self.extra_sources: list[list[int]] | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def start(self, prompts: Sequence[Sequence[int]]) -> None:
        self.finish()
        self.rows = []
        for row, prompt in enumerate(prompts):
            own = SlidingSuffixTrie(self.config.max_depth, self.config.max_indexed_tokens)
            if self.extra_sources is not None and row < len(self.extra_sources):
                own.extend([int(t) for t in self.extra_sources[row]])
            own.extend([int(t) for t in prompt])
            entry = self.corpus.open() if self.corpus is not None else None
            self.rows.append(_Row(own, len(prompt), len(prompt), entry, self.config.max_nodes))
        self.last = [None] * len(self.rows)

    def finish(self, sequences: Sequence[Sequence[int]] | None = None) -> None:
        """The request ended: add each row's final generated tokens (``sequences[row]``, without the prompt,
        where given) to the corpus and close its output there. Called by ``start`` for a previous request."""
        for row, state in enumerate(self.rows):
            if self.corpus is None or state.entry is None:
                continue
            if sequences is not None and row < len(sequences):
                done = state.seen - state.prompt_length
                self.corpus.extend(state.entry, [int(t) for t in sequences[row][done:]])
            self.corpus.close(state.entry)
            state.entry = None

    def _update(self, row: int, context: Sequence[int]) -> None:
        state = self.rows[row]
        if len(context) < state.seen:  # the context was rewound: index it afresh (and stop adding to the corpus)
            if self.corpus is not None and state.entry is not None:
                self.corpus.close(state.entry)
            own = SlidingSuffixTrie(self.config.max_depth, self.config.max_indexed_tokens)
            self.rows[row] = state = _Row(own, min(state.prompt_length, len(context)), 0, None, self.config.max_nodes)
        new = [int(t) for t in context[state.seen:]]
        if not new:
            return
        state.own.extend(new)
        if state.entry is not None and self.corpus is not None:
            generated = new[max(0, state.prompt_length - state.seen):]
            if generated:
                self.corpus.extend(state.entry, generated)
        state.seen = len(context)

    # -- drafting --------------------------------------------------------------------------------------------------
    def _speculate(self, trie: SuffixTrie, node: int, limit: int, source: str, budget: int) -> Speculation | None:
        cfg = self.config
        node = _continue_from(trie, node, cfg.min_match)
        if node < 0:
            return None
        cap = _draft_cap(trie.depth[node], self.spec_factor, min(cfg.max_draft_tokens, limit))
        if cap <= 0:
            return None
        if self.tree:
            spec = speculate_tree(trie, node, min(limit, budget), cap, cfg.min_prob, cfg.min_match)
        else:
            spec = speculate_chain(trie, node, cap, cfg.min_prob, cfg.min_match)
        spec.source = source
        return spec if spec.tokens else None

    def speculate(self, row: int, context: Sequence[int], limit: int) -> Speculation | None:
        """Index the row's new context tokens and grow its best speculation (None: nothing matched)."""
        self._update(row, context)
        if limit <= 0 or not len(context):
            return None
        own, budget = self.rows[row].own, self.rows[row].budget
        best = self._speculate(own.trie, own.deepest(), limit, "own", budget)
        if self.corpus is not None:
            with self.corpus.lock:
                trie = self.corpus.trie
                other = self._speculate(trie, trie.match(context), limit, "corpus", budget)
            if other is not None and (best is None or other.score > best.score):
                best = other
        return best

    def propose(self, contexts: Sequence[Sequence[int]], limits: Sequence[int]) -> list[Draft]:
        out = []
        for row, (context, limit) in enumerate(zip(contexts, limits)):
            spec = self.speculate(row, context, int(limit))
            self.last[row] = spec
            out.append(spec.draft(self.tree) if spec is not None else Draft())
        return out

    def feedback(self, row: int, draft: Draft, accepted_path: Sequence[int]) -> None:
        """Tree mode: a draft whose main path was accepted whole was too short for the run being copied, so the
        next step's node budget doubles (up to ``max_grown_nodes``); a rejection brings it back to ``max_nodes``.
        Chains leave their length to the caller (the draft controller)."""
        if not self.tree or not len(draft) or row >= len(self.rows):
            return
        cfg = self.config
        state = self.rows[row]
        if len(accepted_path) >= len(draft.main_path()):
            state.budget = min(2 * state.budget, max(cfg.max_nodes, cfg.max_grown_nodes))
        else:
            state.budget = cfg.max_nodes
