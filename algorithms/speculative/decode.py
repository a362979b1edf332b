"""The speculative decoding loop on a model session: draft, verify every row's draft in one target forward,
commit, roll back.

Rows of a batch accept different numbers of tokens, but a session truncates all rows to one length. The loop
therefore keeps the common verified prefix in the cache and, per row, the committed tokens beyond it
("pending"); the next block of each row is its pending tokens followed by its new draft. Tree drafts are verified
in one forward with tree attention where the session has it (``ModelSession.append_tree``), else on copies of
the row, one per root-to-leaf path (``ModelSession.select``); on a session with neither only each tree's
first-child chain is verified.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from ... import kernels
from ..contracts.config import SamplingConfig
from ..contracts.decoder import DecodeContext, DecodeResult
from ..contracts.errors import ConfigError, ContextFull
from ..contracts.session import ModelSession, has_tree_attention, tree_depths
from ..sampling.select import argmax_token
from ..sampling.warpers import warped_probs
from .draft import Draft, Drafter
from .schedule import DraftLengthController
from ..loop import processed, stops
from .verify import (Coins, sample_at, stream_seed, verify_chain, verify_chain_coupled, verify_chain_greedy,
                     verify_chain_logits, verify_tree, verify_tree_coupled, verify_tree_seeded)


def can_select(session: ModelSession) -> bool:
    return type(session).select is not ModelSession.select


def clean_draft(draft: Draft, limit: int, eos: frozenset[int]) -> Draft:
    """Cut a draft to ``limit`` nodes and, for a chain, after its first EOS (nothing follows an EOS)."""
    draft = draft.cut(max(limit, 0))
    if draft.is_chain and eos:
        for i, token in enumerate(draft.tokens):
            if token in eos:
                return draft.cut(i + 1)
    return draft


def _as_chain(draft: Draft) -> Draft:
    if draft.is_chain:
        return Draft(list(draft.tokens), None, draft.q)
    path = draft.main_path()
    q = None if draft.q is None else draft.q[path]
    return Draft([draft.tokens[i] for i in path], None, q)


def _path_to(draft: Draft, node: int) -> list[int]:
    """Nodes from the root down to ``node`` (inclusive); empty for the root."""
    parents = draft.node_parents()
    path = []
    while node >= 0:
        path.append(node)
        node = parents[node]
    return path[::-1]


class _Logits:
    """Logits before a block (``prev``, ``(rows, vocab)``) and after each of its tokens (``out``), indexed as one
    sequence ``[prev, out_0, out_1, ...]`` without concatenating them (a copy of ``width x vocab`` per step)."""

    def __init__(self, prev: torch.Tensor, out: torch.Tensor | None):
        self.prev = prev
        self.out = out

    def at(self, index: int) -> torch.Tensor:
        """``(rows, vocab)`` at one position of the sequence."""
        return self.prev if index == 0 or self.out is None else self.out[:, index - 1]

    def row(self, row: int, index: int) -> torch.Tensor:
        return self.prev[row] if index == 0 or self.out is None else self.out[row, index - 1]

    def take(self, rows: Sequence[int]) -> _Logits:
        return _Logits(self.prev[list(rows)], None if self.out is None else self.out[list(rows)])

    def argmax(self) -> torch.Tensor:
        """Argmax at every position, ``(rows, width + 1)``."""
        first = self.prev.argmax(dim=-1, keepdim=True)
        return first if self.out is None else torch.cat([first, self.out.argmax(dim=-1)], dim=1)

    def gather(self, index: torch.Tensor) -> torch.Tensor:
        """``(rows, D, vocab)``: position ``index[r, j]`` of each row."""
        full = self.prev.unsqueeze(1) if self.out is None else torch.cat(
            [self.prev.unsqueeze(1).to(self.out.dtype), self.out], dim=1)
        return full.gather(1, index.unsqueeze(-1).expand(-1, -1, full.shape[-1]))


def _view(seq: _Logits, starts: torch.Tensor, depth: int, width: int, active: list[bool]) -> torch.Tensor | None:
    """``(rows, depth + 1, vocab)``: the logits at each row's draft positions and one more, as a view of the
    forward's output (no copy), when every active row's draft starts at the same place after the block's first token
    (one row, or rows with equal pending tokens); else None."""
    first = {int(starts[b]) for b in range(len(active)) if active[b]}
    if seq.out is None or len(first) != 1:
        return None
    s = first.pop()
    return seq.out[:, s - 1: s + depth] if s >= 1 and s + depth <= width else None


def _row_views(seq: _Logits, starts: torch.Tensor, lengths: torch.Tensor,
               active: list[bool]) -> list[tuple[int, torch.Tensor]] | None:
    """Each active row's ``(1, lengths[b] + 1, vocab)`` logits as a view of the forward's output; None when a row's
    draft starts at the block's first token (its first logits are those before the block)."""
    if seq.out is None or any(active[b] and int(starts[b]) < 1 for b in range(len(active))):
        return None
    return [(b, seq.out[b: b + 1, int(starts[b]) - 1: int(starts[b]) + int(lengths[b])])
            for b in range(len(active)) if active[b]]


def _targets(seq: _Logits, starts: torch.Tensor, depth: int, width: int) -> torch.Tensor:
    """``(rows, depth + 1, vocab)``: each row's logits at its draft positions and one more (position ``starts[b] +
    j`` of the sequence ``[prev, out_0, ...]``, clamped to the block), copied."""
    rows = starts.shape[0]
    index = (starts.unsqueeze(1) + torch.arange(depth + 1).unsqueeze(0)).clamp(max=width)
    if seq.out is None:
        return seq.prev.unsqueeze(1).expand(-1, depth + 1, -1)
    picked = seq.out[torch.arange(rows).unsqueeze(1), (index - 1).clamp(min=0)]
    at_prev = (index == 0).nonzero(as_tuple=True)
    if at_prev[0].numel():
        picked[at_prev] = seq.prev[at_prev[0]].to(picked.dtype)
    return picked


class _Step:
    """What one verification step decided for each row."""

    def __init__(self, rows: int):
        self.accepted_nodes: list[list[int]] = [[] for _ in range(rows)]
        self.accepted_tokens: list[list[int]] = [[] for _ in range(rows)]
        self.next_tokens: list[int] = [0] * rows
        self.logits: _Logits | None = None  # before the block, then after each of its tokens
        self.width = 0
        #: tokens the forward processed per original row (a tree's copies of a row all count)
        self.cost_width = 0.0
        #: per row, how much of the block the cache may keep (None: pending plus the accepted tokens)
        self.cache_valid: list[int | None] = [None] * rows


class _Shadow:
    """A draft proposed at a step that verified none, checked against the tokens the row then emits: under greedy
    decoding and coupling those do not depend on drafts, so the check gives what verifying the draft would have."""

    #: matched tokens after which a shadow counts as accepted so far and is resolved (the controller wants evidence
    #: soon, not the whole length of a long copy)
    DEPTH = 8

    def __init__(self, draft: Draft, start: int):
        self.start = start
        self.children: dict[tuple[int, int], int] = {}
        self.inner: set[int] = set()
        for node, (token, parent) in enumerate(zip(draft.tokens, draft.node_parents())):
            self.children.setdefault((parent, token), node)
            self.inner.add(parent)

    def outcome(self, generated: Sequence[int]) -> tuple[int, bool] | None:
        """``(accepted, rejected)`` once the emitted tokens settle it (a token off every path, a leaf, or
        ``DEPTH`` tokens matched), else None."""
        node = -1
        for depth, token in enumerate(generated[self.start:]):
            child = self.children.get((node, token))
            if child is None:
                return depth, True
            node = child
            if depth + 1 >= self.DEPTH or node not in self.inner:
                return depth + 1, False
        return None


class SpeculativeLoop:
    """Runs one ``generate`` call: a drafter, the target session and the user's sampling settings."""

    #: what proposing shadow drafts may cost, as a share of the loop's time (proposals at steps without drafts)
    SHADOW_SHARE = 0.02

    def __init__(self, ctx: DecodeContext, drafter: Drafter, sampling: SamplingConfig, coins: Coins | None = None,
                 cost_aware: bool = True):
        if ctx.session is None or ctx.prompt_logits is None:
            raise ConfigError("speculative decoding needs a model session and the logits after the prompt")
        if ctx.max_new_tokens < 0:
            raise ConfigError(f"max_new_tokens={ctx.max_new_tokens} must be >= 0")
        self.ctx = ctx
        self.session = ctx.session
        self.drafter = drafter
        self.sampling = sampling
        self.greedy = sampling.greedy
        #: coins a caller passes (exact enumeration) drive every verification through :class:`Coins`; by default
        #: chains and trees are verified through the kernels' dispatcher, on the counter-based random streams of
        #: ``seed`` keyed by (row, tokens generated so far)
        self.coins = coins
        self.seed = stream_seed(sampling.seed)
        self.eos = frozenset(ctx.eos_token_ids)
        self.pad = min(self.eos) if self.eos else 0
        self.tree_attention = drafter.tree and has_tree_attention(self.session)
        self.use_trees = drafter.tree and (self.tree_attention or can_select(self.session))
        #: deterministic drafts under sampling are verified by coupling (``verify_chain_coupled``): every token is
        #: what plain sampling draws at its position, whatever was drafted
        self.coupled = not self.greedy and self.coins is None and drafter.deterministic
        # timing-driven draft lengths cannot change a greedy or a coupled output; sampled drafts (a draft model's)
        # are verified by Leviathan et al.'s rule, whose random numbers depend on the drafts, so there the session's
        # fixed cost hint sizes drafts from acceptance alone and seeded runs repeat
        hint = getattr(self.session, "forward_cost", None)
        self.controller = None
        #: outputs that do not depend on drafts let a cheap drafter's drafts be checked at steps that verify none
        #: (``_Shadow``): a row that stopped drafting learns when drafting pays again without probing
        self.shadows = cost_aware and (self.greedy or self.coupled) and drafter.cheap and drafter.deterministic
        self.shadow: list[_Shadow | None] = [None] * self.session.batch_size
        #: seconds of proposing that shadows may still spend: ``SHADOW_SHARE`` of each step's time
        self.shadow_bank = 0.0
        if cost_aware and (self.greedy or self.coupled):
            self.controller = DraftLengthController(self.session.batch_size, prior_cost=hint, shadows=self.shadows)
        elif cost_aware and hint is not None:
            self.controller = DraftLengthController(self.session.batch_size, fixed_cost=hint)
        #: the runtime's own processors (transformers' repetition penalty, ...): applied to the target's logits at
        #: every verified position, with that position's prefix
        self.processors = ctx.processors
        self.generated: list[list[int]] = []

    # -- verification of one step ----------------------------------------------------------------------------------
    def _block(self, rows: Sequence[list[int]]) -> tuple[list[list[int]] | None, int]:
        """The rows padded to one width (a row's last token repeated; an empty row is padding), as lists: sessions
        take lists, and building a tensor here would cost more calls than the lists do."""
        width = max((len(r) for r in rows), default=0)
        if width == 0:
            return None, 0
        return [r + [r[-1]] * (width - len(r)) if r else [self.pad] * width for r in rows], width

    def _forward(self, prev: torch.Tensor, rows: Sequence[list[int]]) -> tuple[_Logits, int]:
        block, width = self._block(rows)
        if block is None:
            return _Logits(prev, None), 0
        out = self.session.append(block)
        self.forward_passes += 1
        return _Logits(prev, out), width

    def _chain_step(self, prev: torch.Tensor, pending: list[list[int]], drafts: list[Draft],
                    active: list[bool]) -> _Step:
        rows = len(drafts)
        step = _Step(rows)
        blocks = [pending[b] + drafts[b].tokens if active[b] else [] for b in range(rows)]
        seq, width = self._forward(prev, blocks)
        step.logits, step.width, step.cost_width = seq, width, float(width)
        if (self.greedy or self.coupled) and self.processors is None and not any(
                active[b] and len(d) for b, d in enumerate(drafts)):
            # nothing drafted (the controller chose plain steps): the next token is the argmax (or plain sampling's
            # draw) after each row's pending tokens, as verification of an empty draft would find, without building
            # its tensors
            live = [b for b in range(rows) if active[b]]
            if self.greedy:
                chosen = [argmax_token(seq.row(b, len(pending[b]))) for b in live]
            elif len(live) == 1:  # one row: its stream as ints, no index tensors to build
                (b,) = live
                chosen = sample_at(seq.row(b, len(pending[b])).unsqueeze(0), self.sampling, seed=self.seed,
                                   offsets=len(self.generated[b]), rows=b).tolist()
            else:
                chosen = sample_at(torch.stack([seq.row(b, len(pending[b])) for b in live]), self.sampling,
                                   seed=self.seed, offsets=torch.tensor([len(self.generated[b]) for b in live]),
                                   rows=torch.tensor(live)).tolist()
            for b, token in zip(live, chosen):
                step.next_tokens[b] = token
            return step
        lengths = torch.tensor([len(d) if active[b] else 0 for b, d in enumerate(drafts)], dtype=torch.long)
        depth = int(lengths.max()) if rows else 0
        starts = torch.tensor([len(p) if active[b] else 0 for b, p in enumerate(pending)], dtype=torch.long)
        draft_t = torch.zeros(rows, depth, dtype=torch.long)
        for b, d in enumerate(drafts):
            if active[b] and len(d):
                draft_t[b, : len(d)] = torch.tensor(d.tokens, dtype=torch.long)
        offsets = torch.tensor([len(g) for g in self.generated], dtype=torch.long)
        targets = _view(seq, starts, depth, width, active)
        views = None
        if targets is None and self.greedy and self.coins is None and self.processors is None:
            # greedy rows whose drafts start at different places: an argmax per row on a view of the forward's
            # output costs less than copying every row's logits first (sampling rows share one call on a copy)
            views = _row_views(seq, starts, lengths, active)
        if views is not None:
            n = torch.zeros(rows, dtype=torch.long)
            nxt = torch.zeros(rows, dtype=torch.long)
            for b, view in views:
                size = int(lengths[b])
                n[b: b + 1], nxt[b: b + 1] = verify_chain_logits(
                    view, draft_t[b: b + 1, :size], lengths[b: b + 1], None, self.sampling, seed=self.seed,
                    offsets=offsets[b: b + 1], rows=torch.tensor([b]))
        else:
            if targets is None:
                targets = _targets(seq, starts, depth, width)
            if self.processors is not None:
                targets = self._transformed(targets, drafts, active)
            q = None
            if not self.greedy and not self.drafter.deterministic:
                q = self._draft_probs(drafts, active, depth, targets.shape[-1],
                                      torch.float32 if self.coins is None else torch.float64)
            if self.coupled:
                n, nxt = verify_chain_coupled(targets, draft_t, lengths, self.sampling, seed=self.seed,
                                              offsets=offsets)
            elif self.coins is None:
                n, nxt = verify_chain_logits(targets, draft_t, lengths, q, self.sampling, seed=self.seed,
                                             offsets=offsets)
            elif self.greedy:
                n, nxt = verify_chain_greedy(draft_t, lengths, targets.argmax(dim=-1))
            else:
                n, nxt = verify_chain(draft_t, lengths, warped_probs(targets, self.sampling), q, self.coins)
        for b in range(rows):
            k = int(n[b])
            step.accepted_nodes[b] = list(range(k))
            step.accepted_tokens[b] = drafts[b].tokens[:k]
            step.next_tokens[b] = int(nxt[b])
        return step

    def _transformed(self, sel: torch.Tensor, drafts: list[Draft], active: list[bool]) -> torch.Tensor:
        """The runtime's processors on each row's logits at each draft position (one batched call)."""
        where: list[tuple[int, int]] = []
        histories: list[list[int]] = []
        for b, d in enumerate(drafts):
            if active[b]:
                for j in range(min(len(d), sel.shape[1] - 1) + 1):
                    where.append((b, j))
                    histories.append(self.generated[b] + d.tokens[:j])
        if not where:
            return sel
        out = sel.clone()
        rows = torch.tensor([b for b, _ in where], dtype=torch.long)
        cols = torch.tensor([j for _, j in where], dtype=torch.long)
        out[rows, cols] = processed(self.ctx, [b for b, _ in where], histories, sel[rows, cols])
        return out

    def _draft_probs(self, drafts: list[Draft], active: list[bool], depth: int, vocab: int,
                     dtype: torch.dtype) -> torch.Tensor:
        """``(rows, depth, vocab)``: the distribution each draft token was drawn from (zeros past a row's draft)."""
        q = torch.zeros(len(drafts), depth, vocab, dtype=dtype)
        for b, d in enumerate(drafts):
            if active[b] and len(d):
                if d.q is None:
                    raise ConfigError(f"drafter {type(self.drafter).__name__} samples but gave no q")
                q[b, : len(d)] = d.q
        return q

    def _node_dist(self, row: int, draft: Draft, logits: torch.Tensor, node: int,
                   cache: dict[int, torch.Tensor]) -> torch.Tensor:
        """The target distribution (greedy: logits) after the path to ``node`` (-1: the root) of ``row``'s draft."""
        if node not in cache:
            vec = logits
            if self.processors is not None:
                prefix = self.generated[row] + [draft.tokens[i] for i in _path_to(draft, node)]
                vec = processed(self.ctx, [row], [prefix], vec.unsqueeze(0))[0]
            if self.greedy or self.coupled:
                cache[node] = vec
            elif self.coins is not None:
                cache[node] = warped_probs(vec, self.sampling)
            else:
                s = self.sampling
                cache[node] = kernels.warp_probs(vec.unsqueeze(0), s.temperature, s.top_k, s.top_p, s.min_p)[0]
        return cache[node]

    def _verify_tree(self, row: int, draft: Draft, logits_at) -> tuple[list[int], int]:
        """Verify one row's tree; ``logits_at(node)`` gives the target's logits after ``node`` or None."""
        cache: dict[int, torch.Tensor] = {}

        def dist_at(node: int) -> torch.Tensor | None:
            vec = logits_at(node)
            return None if vec is None else self._node_dist(row, draft, vec, node, cache)

        if not self.drafter.deterministic and draft.q is None:
            raise ConfigError(f"drafter {type(self.drafter).__name__} samples its tree but gave no q: the tree "
                              "cannot be verified losslessly without the distribution its nodes were drawn from")
        if self.coupled:
            return verify_tree_coupled(draft.tokens, draft.node_parents(), dist_at, self.sampling, seed=self.seed,
                                       offset=len(self.generated[row]), row=row)
        if self.greedy or self.coins is not None:
            q = None if self.drafter.deterministic else draft.q.to(torch.float64)  # type: ignore[union-attr]
            return verify_tree(draft.tokens, draft.node_parents(), q, dist_at, self.coins, self.greedy)
        q = None if self.drafter.deterministic else draft.q.to(torch.float32)  # type: ignore[union-attr]
        return verify_tree_seeded(draft.tokens, draft.node_parents(), q, dist_at, seed=self.seed,
                                  offset=len(self.generated[row]), row=row)

    def _tree_attention_step(self, prev: torch.Tensor, pending: list[list[int]], drafts: list[Draft],
                             active: list[bool]) -> _Step:
        """All rows' trees in one forward with tree attention (``ModelSession.append_tree``): each row's block is
        its pending tokens (a chain) followed by its draft tree."""
        rows = len(drafts)
        step = _Step(rows)
        blocks: list[list[int]] = []
        links: list[list[int]] = []
        for b in range(rows):
            own = pending[b] if active[b] else []
            nodes = drafts[b].tokens if active[b] else []
            start = len(own)
            blocks.append(own + nodes)
            links.append(list(range(-1, start - 1)) + [p + start if p >= 0 else start - 1
                                                         for p in drafts[b].node_parents()[: len(nodes)]])
        width = max(len(r) for r in blocks)
        block = torch.full((rows, width), self.pad, dtype=torch.long)
        parents = torch.full((rows, width), -1, dtype=torch.long)
        for b in range(rows):
            n = len(blocks[b])
            if n:
                block[b, :n] = torch.tensor(blocks[b], dtype=torch.long)
                parents[b, :n] = torch.tensor(links[b], dtype=torch.long)
            # padding continues the row's chain (it is cut off before anything reads it)
            for i in range(n, width):
                parents[b, i] = i - 1
        out = self.session.append_tree(block, parents)
        self.forward_passes += 1
        seq = _Logits(prev, out)
        for b in range(rows):
            if not active[b]:
                continue
            start = len(pending[b])
            d = drafts[b]

            def logits_at(node: int, _b: int = b, _start: int = start) -> torch.Tensor:
                return seq.row(_b, _start if node < 0 else _start + node + 1)

            path, token = self._verify_tree(b, d, logits_at)
            step.accepted_nodes[b] = path
            step.accepted_tokens[b] = [d.tokens[i] for i in path]
            step.next_tokens[b] = token
            # the cache is a valid continuation only along the block's leading chain (node i's parent is i - 1)
            chain, links_b = 0, d.node_parents()
            while chain < len(path) and path[chain] == chain and links_b[chain] == chain - 1:
                chain += 1
            step.cache_valid[b] = start + chain
        step.logits, step.width, step.cost_width = seq, width, float(width)
        return step

    def _tree_step(self, prev: torch.Tensor, pending: list[list[int]], drafts: list[Draft],
                   active: list[bool]) -> _Step:
        rows = len(drafts)
        step = _Step(rows)
        expanded: list[int] = []  # session row -> original row
        paths: list[list[int]] = []
        for b in range(rows):
            row_paths = drafts[b].paths() if active[b] and len(drafts[b]) else [[]]
            for path in row_paths:
                expanded.append(b)
                paths.append(path)
        self.session.select(expanded)
        blocks = [pending[b] + [drafts[b].tokens[i] for i in path] if active[b] else []
                  for b, path in zip(expanded, paths)]
        seq, width = self._forward(prev[expanded], blocks)
        winners: list[int] = []
        for b in range(rows):
            mine = [r for r, owner in enumerate(expanded) if owner == b]
            if not active[b]:
                winners.append(mine[0])
                continue
            start = len(pending[b])
            d = drafts[b]
            where: dict[int, tuple[int, int]] = {}
            for r in mine:
                for depth, node in enumerate(paths[r]):
                    where.setdefault(node, (r, start + depth + 1))

            def logits_at(node: int, _mine: list[int] = mine, _where: dict = where,
                          _start: int = start) -> torch.Tensor | None:
                r, pos = (_mine[0], _start) if node < 0 else _where.get(node, (-1, -1))
                return None if r < 0 else seq.row(r, pos)

            path, token = self._verify_tree(b, d, logits_at)
            winner = next((r for r in mine if paths[r][: len(path)] == path), mine[0])
            winners.append(winner)
            step.accepted_nodes[b] = path
            step.accepted_tokens[b] = [d.tokens[i] for i in path]
            step.next_tokens[b] = token
        self.session.select(winners)
        step.logits, step.width = seq.take(winners), width
        step.cost_width = width * len(expanded) / max(rows, 1)
        return step

    def _shadow_of(self, draft: Draft, cap: int, start: int) -> _Shadow:
        """``draft``, proposed after ``start`` generated tokens, as a shadow (cut as a verified draft would be)."""
        return _Shadow(clean_draft(draft, cap, self.eos), start)

    def _draft_limit(self, row: int, cap: int, pending: int) -> int:
        """The controller's draft length; a tree verified in one pass gets the drafter's whole node budget
        whenever drafting pays at all (the controller's chain model would cut a bushy tree to one node), but not a
        probe of a row that had stopped drafting, whose size is its probing budget."""
        assert self.controller is not None
        k = self.controller.limit(row, cap, pending)
        return cap if self.use_trees and k > 0 and not self.controller.probing[row] else k

    # -- the loop -------------------------------------------------------------------------------------------------
    def run(self) -> DecodeResult:
        ctx, session = self.ctx, self.session
        rows = session.batch_size
        prompts = [list(p) for p in ctx.prompts] if ctx.prompts else [session.tokens(b) for b in range(rows)]
        self.drafter.start(prompts)
        generated: list[list[int]] = [[] for _ in range(rows)]
        self.generated = generated
        reasons: list[str | None] = [None if ctx.max_new_tokens > 0 else "length" for _ in range(rows)]
        pending: list[list[int]] = [[] for _ in range(rows)]
        prev = ctx.prompt_logits
        assert prev is not None
        self.forward_passes = 0
        drafted = accepted = steps = shadows_checked = shadows_accepted = 0
        started = time.perf_counter()
        while True:
            active = [r is None for r in reasons]
            if not any(active):
                break
            caps = [max(0, ctx.max_new_tokens - len(generated[b]) - 1) if active[b] else 0 for b in range(rows)]
            widest = getattr(session, "max_block", None)  # ModelSession.max_block; duck-typed sessions lack it
            if widest is not None:
                # a block is the pending tokens and the draft, and a row that accepts its whole draft while another
                # row accepts nothing carries all of it and its next token as pending into the next block
                caps = [max(0, min(caps[b], widest - 1 - len(pending[b]))) for b in range(rows)]
            limits = caps
            if self.controller is not None:
                limits = [self._draft_limit(b, caps[b], len(pending[b])) if active[b] else 0 for b in range(rows)]
            shadowed = [b for b in range(rows) if self.shadows and self.shadow_bank >= 0 and limits[b] == 0
                        and caps[b] > 0 and self.shadow[b] is None]
            asked = [caps[b] if b in shadowed else limits[b] for b in range(rows)]
            contexts = [prompts[b] + generated[b] for b in range(rows)]
            draft_started = time.perf_counter()
            proposed = self.drafter.propose(contexts, asked)
            draft_seconds = time.perf_counter() - draft_started
            if shadowed:
                # the proposing of the shadowed rows' share of the batch
                self.shadow_bank -= draft_seconds * len(shadowed) / max(sum(active), 1)
                for b in shadowed:
                    if len(proposed[b]):
                        self.shadow[b] = self._shadow_of(proposed[b], caps[b], len(generated[b]))
                    proposed[b] = Draft(fresh=proposed[b].fresh)
            if self.controller is not None and self.use_trees:
                for b in range(rows):
                    tree = proposed[b]
                    if (active[b] and b not in shadowed and not tree.is_chain and not self.controller.probing[b]
                            and not self.controller.pays(b, len(tree), max(tree_depths(tree.node_parents())),
                                                         len(pending[b]))):
                        # the controller's chain model let the row draft, but this tree's nodes cost more than its
                        # deepest path is expected to save: a plain step, with the tree as its shadow
                        if self.shadows and self.shadow[b] is None:
                            self.shadow[b] = self._shadow_of(tree, caps[b], len(generated[b]))
                        proposed[b] = Draft(fresh=tree.fresh)
            drafts = [clean_draft(proposed[b], limits[b], self.eos) if active[b] else Draft() for b in range(rows)]
            for b in range(rows):
                if len(drafts[b]):
                    self.shadow[b] = None  # the row drafts again: its own drafts measure acceptance now
            if self.controller is not None:
                for b in range(rows):
                    if active[b] and proposed[b].fresh and not len(drafts[b]):
                        self.controller.new_phase(b)  # the drafter found drafts again: draft from the next step
            step_started = time.perf_counter()
            try:
                if self.use_trees and any(len(d) and not d.is_chain for d in drafts):
                    tree_step = self._tree_attention_step if self.tree_attention else self._tree_step
                    step = tree_step(prev, pending, drafts, active)
                else:
                    step = self._chain_step(prev, pending, [_as_chain(d) for d in drafts], active)
            except ContextFull:
                break  # no room for this step: the running rows end with "length" and their tokens so far
            steps += 1
            if self.controller is not None and step.width:
                # the whole step (drafting, forward, verification) is what a longer or shorter draft trades against
                step_seconds = time.perf_counter() - step_started + draft_seconds
                self.controller.record_forward(round(step.cost_width), step_seconds)
                self.shadow_bank = min(self.shadow_bank + self.SHADOW_SHARE * step_seconds, step_seconds)
            keep = []
            for b in range(rows):
                if not active[b]:
                    continue
                drafted += len(drafts[b])
                accepted += len(step.accepted_nodes[b])
                self.drafter.feedback(b, drafts[b], step.accepted_nodes[b])
                if self.controller is not None:
                    self.controller.record_row(b, len(drafts[b]), len(step.accepted_nodes[b]))
                emitted = step.accepted_tokens[b] + [step.next_tokens[b]]
                if not emitted:  # every verification emits the target's own token: without it the loop cannot end
                    raise RuntimeError(f"speculative step emitted no token for row {b}")
                for i, token in enumerate(emitted):
                    if token in self.eos:
                        emitted = emitted[: i + 1]
                        reasons[b] = "stop"
                        break
                if ctx.stopping is not None:
                    for i in range(len(emitted)):
                        if stops(ctx, b, generated[b] + emitted[: i + 1]):
                            emitted = emitted[: i + 1]
                            reasons[b] = "stop"
                            break
                room = ctx.max_new_tokens - len(generated[b])
                if len(emitted) >= room:
                    emitted = emitted[:room]
                    reasons[b] = reasons[b] or "length"
                generated[b].extend(emitted)
                shadow = self.shadow[b]
                if shadow is not None and self.controller is not None:
                    outcome = shadow.outcome(generated[b])
                    if outcome is not None or reasons[b] is not None:
                        self.shadow[b] = None
                    if outcome is not None:
                        self.controller.record_outcome(b, *outcome)
                        shadows_checked += 1
                        shadows_accepted += outcome[0]
                if ctx.on_token is not None:
                    for token in emitted:
                        ctx.on_token(b, token)
                if reasons[b] is None:
                    valid = step.cache_valid[b]
                    keep.append(len(pending[b]) + len(step.accepted_tokens[b]) if valid is None else valid)
            if not keep:
                break
            # keep the prefix every live row verified in the cache; the rest of each row becomes pending
            common = min(keep)
            drop = step.width - common
            if drop > 0:
                session.truncate(session.length - drop)
            assert step.logits is not None
            prev = step.logits.at(common)
            for b in range(rows):
                if reasons[b] is None:
                    pending[b] = (pending[b] + step.accepted_tokens[b])[common:] + [step.next_tokens[b]]
                else:
                    pending[b] = []
        final = [r or "length" for r in reasons]
        stats: dict[str, Any] = {
            "new_tokens": sum(len(g) for g in generated),
            "forward_passes": self.forward_passes,
            "steps": steps,
            "drafted": drafted,
            "accepted": accepted,
            "acceptance_rate": accepted / drafted if drafted else 0.0,
            "tokens_per_forward": sum(len(g) for g in generated) / max(self.forward_passes, 1),
            "shadow_drafts": shadows_checked,
            "shadow_accepted": shadows_accepted,
            "decode_seconds": time.perf_counter() - started,
        }
        draft_forwards = getattr(self.drafter, "forward_passes", None)
        if draft_forwards is not None:
            stats["draft_forward_passes"] = draft_forwards
        return DecodeResult(sequences=generated, prompt_rows=list(range(rows)), finish_reasons=final, stats=stats)


def speculative_decode(ctx: DecodeContext, drafter: Drafter, sampling: SamplingConfig,
                       coins: Coins | None = None, cost_aware: bool = True) -> DecodeResult:
    """Generate with speculative decoding: lossless for any drafter, identical to greedy when temperature is 0.

    ``cost_aware`` caps draft lengths by the cost of target forwards (``schedule.DraftLengthController``):
    measured under greedy decoding and for deterministic drafts under sampling (verified by coupling, so the output
    does not depend on them), the session's fixed ``forward_cost`` hint for sampled drafts.
    """
    return SpeculativeLoop(ctx, drafter, sampling, coins, cost_aware).run()
