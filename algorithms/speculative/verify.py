"""Lossless verification of drafts: chain (Leviathan et al. 2023) and tree (SpecInfer multi-step speculative
sampling, Miao et al. 2024), greedy and stochastic.

The target distribution ``p`` is what the user's sampler draws from (temperature, top-k, top-p applied to the
target's logits); ``q`` is exactly the distribution each draft token was drawn from, or ``None`` for a
deterministic drafter (q is then the one-hot of the drafted token).

Two sources of randomness, one rule:

* :func:`verify_chain_logits` (what the decoding loop calls) takes the target's *raw* logits and hands the batch to
  the kernels' dispatcher (``anydecode.kernels.verify_chain``: warping, coins and the corrected or bonus token in
  one call, a Triton kernel on CUDA, the torch reference elsewhere). Its random numbers come from the kernels'
  counter-based generator, keyed by (seed, row, tokens generated so far), so a seeded run repeats on any device.
* :func:`verify_chain` and :func:`verify_tree` take the target distribution and a :class:`Coins` object, so a test
  can replace the coins by ones that enumerate every outcome with its probability (``exact.enumerate_outcomes``).

Deterministic drafts under sampling take a third route, coupling (:func:`verify_chain_coupled`,
:func:`verify_tree_coupled`): each position's token is what plain sampling draws there on the same streams
(:func:`sample_at`), and drafts are kept while they equal it, so the output does not depend on the drafts.
"""

from __future__ import annotations

import abc
import secrets
from collections.abc import Callable, Sequence

import torch

from ... import kernels
from ..contracts.config import SamplingConfig
from ..sampling.select import categorical, make_generator

#: seeds of the kernels' random streams are 63-bit (int64)
SEED_BITS = 63


class Coins(abc.ABC):
    """The random decisions verification makes: biased coin flips and categorical draws."""

    @abc.abstractmethod
    def accept(self, prob: torch.Tensor) -> torch.Tensor:
        """A bool tensor shaped like ``prob``: each entry True with that probability (0 and 1 are certain)."""

    @abc.abstractmethod
    def choose(self, probs: torch.Tensor) -> torch.Tensor:
        """One index per row of ``probs`` (shape ``(n, vocab)``, rows summing to 1)."""


class SeededCoins(Coins):
    """Coins from a seeded torch generator of their own (never torch's global stream)."""

    def __init__(self, seed: int | None = None, generator: torch.Generator | None = None):
        self.generator = generator if generator is not None else make_generator(seed)

    def accept(self, prob: torch.Tensor) -> torch.Tensor:
        u = torch.rand(prob.shape, generator=self.generator, dtype=torch.float64)
        return u < prob.to(torch.float64)

    def choose(self, probs: torch.Tensor) -> torch.Tensor:
        return categorical(probs, self.generator)


def residual_distribution(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``normalise(max(0, p - q))`` over the last dimension: what is sampled after a rejection.

    Where ``p - q`` has no positive mass (only possible by rounding, since a rejection then has probability 0)
    the row falls back to ``p``.
    """
    diff = (p - q).clamp_min(0.0)
    total = diff.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, diff / total.clamp_min(torch.finfo(diff.dtype).tiny), p)


def acceptance_probability(px: torch.Tensor, qx: torch.Tensor | None) -> torch.Tensor:
    """``min(1, p(x) / q(x))``; ``qx=None`` is a deterministic draft (q(x) = 1)."""
    if qx is None:
        return px.clamp(0.0, 1.0)
    ratio = px / qx.clamp_min(torch.finfo(px.dtype).tiny)
    # a token the drafter could not have drawn (q(x) = 0) is never accepted
    return torch.where(qx > 0, ratio.clamp(max=1.0), torch.zeros_like(ratio))


def _draft_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    return torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)


def _leading_true(ok: torch.Tensor) -> torch.Tensor:
    """Number of leading True entries of each row."""
    if ok.shape[1] == 0:
        return torch.zeros(ok.shape[0], dtype=torch.long)
    return ok.to(torch.long).cumprod(dim=1).sum(dim=1)


def verify_chain_greedy(draft: torch.Tensor, lengths: torch.Tensor,
                        target_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy chain verification of a batch.

    ``draft`` is ``(batch, D)`` (row ``b`` uses its first ``lengths[b]`` entries), ``target_tokens`` the target's
    argmax at each draft position and one more, ``(batch, D + 1)``. Returns the number of accepted draft tokens
    and the next token of each row (the target's own token at the first mismatch, or the bonus token).
    """
    width = draft.shape[1]
    ok = (draft == target_tokens[:, :width]) & _draft_mask(lengths, width)
    n = _leading_true(ok)
    return n, target_tokens.gather(1, n.unsqueeze(1)).squeeze(1)


def verify_chain(draft: torch.Tensor, lengths: torch.Tensor, p: torch.Tensor, q: torch.Tensor | None,
                 coins: Coins) -> tuple[torch.Tensor, torch.Tensor]:
    """Speculative sampling over a batch of chains (Leviathan et al. 2023, Algorithm 1).

    ``p`` is ``(batch, D + 1, vocab)``: the target distribution at each draft position and after the last one;
    ``q`` is ``(batch, D, vocab)`` or None for deterministic drafts. Draft token ``j`` is accepted with
    probability ``min(1, p_j(x_j) / q_j(x_j))`` while every earlier one was; at the first rejection the next token
    is drawn from ``normalise(max(0, p_n - q_n))``, and when all are accepted a bonus token is drawn from
    ``p_len``. Every emitted token is then distributed exactly as ``p`` given the tokens before it.
    """
    batch, width = draft.shape
    rows = torch.arange(batch)
    if width:
        px = p[:, :width].gather(-1, draft.unsqueeze(-1)).squeeze(-1)
        qx = None if q is None else q.gather(-1, draft.unsqueeze(-1)).squeeze(-1)
        valid = _draft_mask(lengths, width)
        prob = torch.where(valid, acceptance_probability(px, qx), torch.zeros_like(px))
        n = _leading_true(coins.accept(prob) & valid)
    else:
        n = torch.zeros(batch, dtype=torch.long)
    final = p[rows, n]
    rejected = n < lengths
    if bool(rejected.any()):
        at = n.clamp(max=max(width - 1, 0))
        if q is None:
            q_at = torch.nn.functional.one_hot(draft[rows, at], p.shape[-1]).to(p.dtype)
        else:
            q_at = q[rows, at]
        final = torch.where(rejected.unsqueeze(1), residual_distribution(final, q_at), final)
    return n, coins.choose(final)


def stream_seed(seed: int | None) -> int:
    """The seed of the kernels' random streams for a sampling ``seed``: the seed itself (folded into 63 bits), or a
    fresh random one when None (an unseeded run)."""
    if seed is None:
        return secrets.randbits(SEED_BITS)
    return int(seed) % (1 << SEED_BITS)


def verify_chain_logits(target_logits: torch.Tensor, draft: torch.Tensor, lengths: torch.Tensor,
                        q: torch.Tensor | None, sampling: SamplingConfig, *, seed: int,
                        offsets: torch.Tensor, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Chain verification of a batch from the target's raw logits, through the kernels' dispatcher.

    ``target_logits`` ``(batch, D + 1, vocab)``: the target's logits (after the runtime's processors, before the
    sampling warpers) at each draft position and after the last one; ``q`` ``(batch, D, vocab)`` the drafter's
    probabilities or None for deterministic drafts; ``offsets`` ``(batch,)`` the tokens each row has generated so far
    (the position of its first draft), ``rows`` each row's identity in the random streams (default: its index).
    Same rule as :func:`verify_chain` with ``p`` the warp of ``sampling``; greedy settings keep drafts while they
    equal the target's argmax. Returns ``(accepted, next_token)``.
    """
    if sampling.greedy:
        return kernels.verify_chain_greedy(target_logits, draft, lengths)
    return kernels.verify_chain(target_logits, draft, q, seeds=seed, offsets=offsets, lengths=lengths,
                                temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p,
                                min_p=sampling.min_p, rows=rows)


#: the distribution (or, when greedy, the logits) after a tree node; node ``-1`` is the root (the last committed
#: token). None where the node was not evaluated: verification then stops at it.
NodeDistribution = Callable[[int], "torch.Tensor | None"]


def children_of(parents: Sequence[int]) -> dict[int, list[int]]:
    """Children of each node in drafting order; the root is ``-1``."""
    kids: dict[int, list[int]] = {}
    for node, parent in enumerate(parents):
        kids.setdefault(parent, []).append(node)
    return kids


#: one node of a tree walk: ``(depth, distribution at the node, its children in drafting order)`` to ``(accepted
#: child or None, the next token when no child is accepted)``
NodeStep = Callable[[int, torch.Tensor, list[int]], "tuple[int | None, int]"]


def walk_tree(tokens: Sequence[int], parents: Sequence[int], dist_at: NodeDistribution,
              step: NodeStep) -> tuple[list[int], int]:
    """Descend a draft tree from the root, letting ``step`` decide at each node; return the accepted nodes (a
    root-to-node path) and the next token. An accepted child whose distribution was not evaluated becomes the next
    token; at a leaf the next node has no children and ``step`` draws the bonus token."""
    kids = children_of(parents)
    path: list[int] = []
    node = -1
    cur = dist_at(node)
    if cur is None:
        raise ValueError("the target distribution at the tree root is required")
    while True:
        chosen, token = step(len(path), cur, kids.get(node, []))
        if chosen is None:
            return path, token
        following = dist_at(chosen)
        if following is None:
            return path, int(tokens[chosen])
        path.append(chosen)
        node, cur = chosen, following


def verify_tree(tokens: Sequence[int], parents: Sequence[int], q: torch.Tensor | None,
                dist_at: NodeDistribution, coins: Coins | None, greedy: bool) -> tuple[list[int], int]:
    """Walk a draft tree from the root; return the accepted nodes (a root-to-node path) and the next token.

    Stochastic (SpecInfer multi-step speculative sampling): at a node, children ``x_1..x_m`` are tried in order,
    each accepted with probability ``min(1, r(x_s) / q_s(x_s))`` where ``r`` starts as the target distribution and
    becomes ``normalise(max(0, r - q_s))`` after each rejected child. The residual update is what makes the output
    exactly ``p``; re-testing every child against the unchanged ``p`` is biased. If no child is accepted the next
    token is drawn from ``r``. ``q[node]`` is the distribution the node's token was drawn from (siblings drawn
    independently), or None for deterministic drafts (one-hot). Greedy: descend while a child equals the target's
    argmax. An accepted child whose distribution was not evaluated becomes the next token.
    """
    if greedy:
        return walk_tree(tokens, parents, dist_at, lambda depth, cur, options: _greedy_node(tokens, cur, options))
    assert coins is not None

    def step(depth: int, cur: torch.Tensor, options: list[int]) -> tuple[int | None, int]:
        for child in options:
            x = int(tokens[child])
            q_child = None if q is None else q[child]
            prob = acceptance_probability(cur[x], None if q_child is None else q_child[x])
            if bool(coins.accept(prob)):
                return child, x
            if q_child is None:
                q_child = torch.nn.functional.one_hot(torch.tensor(x), cur.shape[-1]).to(cur.dtype)
            cur = residual_distribution(cur, q_child)
        return None, int(coins.choose(cur.unsqueeze(0))[0])

    return walk_tree(tokens, parents, dist_at, step)


def verify_tree_seeded(tokens: Sequence[int], parents: Sequence[int], q: torch.Tensor | None,
                       dist_at: NodeDistribution, *, seed: int, offset: int, row: int) -> tuple[list[int], int]:
    """:func:`verify_tree` (stochastic) through the kernels' dispatcher: one ``kernels.verify_tree_node`` call per
    node, on the random stream ``(seed, row, offset + depth)``; ``dist_at`` gives float probabilities."""

    def step(depth: int, cur: torch.Tensor, options: list[int]) -> tuple[int | None, int]:
        children = torch.tensor([[int(tokens[c]) for c in options]], dtype=torch.long)
        q_children = None if q is None or not options else q[options].unsqueeze(0)
        child, token = kernels.verify_tree_node(cur.unsqueeze(0), children, q_children, seeds=seed,
                                                positions=offset + depth, rows=row)
        s = int(child[0])
        return (options[s] if s >= 0 else None), int(token[0])

    return walk_tree(tokens, parents, dist_at, step)


def _greedy_node(tokens: Sequence[int], cur: torch.Tensor, options: list[int]) -> tuple[int | None, int]:
    target = int(torch.argmax(cur))
    return next((c for c in options if tokens[c] == target), None), target


def sample_at(logits: torch.Tensor, sampling: SamplingConfig, *, seed: int, offsets: torch.Tensor | int,
              rows: torch.Tensor | int) -> torch.Tensor:
    """The token plain sampling draws from each row of raw ``logits`` (``(N, vocab)``) on the stream ``(seed,
    rows[i], offsets[i])``: what the dispatcher's verification of an empty draft gives (its bonus token), so exactly
    what a step of the decoding loop that drafted nothing samples there. int64 ``(N,)``."""
    return kernels.sample_tokens(logits, seeds=seed, offsets=offsets, temperature=sampling.temperature,
                                 top_k=sampling.top_k, top_p=sampling.top_p, min_p=sampling.min_p, rows=rows)


def verify_chain_coupled(target_logits: torch.Tensor, draft: torch.Tensor, lengths: torch.Tensor,
                         sampling: SamplingConfig, *, seed: int, offsets: torch.Tensor,
                         rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic drafts under sampling, verified by coupling: the token at each position is the one plain
    sampling draws there (:func:`sample_at` on the stream of that position), and drafts are kept while they equal
    it; the first token that differs (or the one after the last draft) is the next token.

    Lossless: each emitted token is the target's own draw at its position given the tokens before it, and a draft
    ``x`` is kept with probability ``p(x)``, as with Leviathan et al.'s rule for one-hot drafts. Unlike that rule
    the output does not depend on the drafts at all: a seeded run gives the same tokens whatever was drafted and
    however long the drafts were, so draft lengths may follow measured time under sampling as under greedy
    decoding. Positions are sampled in growing chunks (2, 4, 8, ...) and only while a row's drafts still match.
    Same arguments and result as :func:`verify_chain_logits` with ``q=None``.
    """
    batch = target_logits.shape[0]
    stream_rows = torch.arange(batch) if rows is None else rows
    accepted = torch.zeros(batch, dtype=torch.long)
    token = torch.full((batch,), -1, dtype=torch.long)
    limit = [int(x) for x in lengths]
    drafts = draft.tolist()
    live, start, chunk = list(range(batch)), 0, 2
    while live:
        pairs = [(b, j) for b in live for j in range(start, min(start + chunk, limit[b] + 1))]
        at_b = torch.tensor([b for b, _ in pairs], dtype=torch.long)
        at_j = torch.tensor([j for _, j in pairs], dtype=torch.long)
        drawn = sample_at(target_logits[at_b, at_j], sampling, seed=seed, offsets=offsets[at_b] + at_j,
                          rows=stream_rows[at_b]).tolist()
        done: set[int] = set()
        for (b, j), t in zip(pairs, drawn):
            if b in done:
                continue
            if j < limit[b] and t == drafts[b][j]:
                accepted[b] = j + 1
            else:
                token[b] = t
                done.add(b)
        live = [b for b in live if b not in done]
        start, chunk = start + chunk, 2 * chunk
    return accepted, token


def verify_tree_coupled(tokens: Sequence[int], parents: Sequence[int], logits_at: NodeDistribution,
                        sampling: SamplingConfig, *, seed: int, offset: int, row: int) -> tuple[list[int], int]:
    """A deterministic tree under sampling, verified by coupling (:func:`verify_chain_coupled`): at each node the
    token is what plain sampling draws there (stream ``(seed, row, offset + depth)``); the walk descends to the child
    with that token, if any, else the token is the next one. ``logits_at`` gives raw logits (after the runtime's
    processors), as the plain step samples them."""
    where = torch.tensor([row], dtype=torch.long)

    def step(depth: int, cur: torch.Tensor, options: list[int]) -> tuple[int | None, int]:
        t = int(sample_at(cur.unsqueeze(0), sampling, seed=seed, offsets=torch.tensor([offset + depth]),
                          rows=where)[0])
        return next((c for c in options if int(tokens[c]) == t), None), t

    return walk_tree(tokens, parents, logits_at, step)
