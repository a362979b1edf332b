"""Draft lengths chosen from measured cost and observed acceptance (greedy decoding only).

Verifying ``k`` draft tokens yields ``E(k) = (1 - a^(k+1)) / (1 - a)`` tokens per target forward for a per-token
acceptance ``a`` (Leviathan et al. 2023), and a forward over ``w`` tokens costs about ``c0 + c1 * w + cb * (w > 1)``:
``cb`` is the one-off price of leaving the one-token path (on a CPU a second token can cost most of a first one;
a linear model would make short drafts look cheap). On a GPU
``c1`` is near 0 and long drafts are free; on a CPU it is not (llama.cpp's quantised kernels cost nearly as much
per token in a batch as alone), so the best ``k`` differs by runtime and machine. This controller fits ``c0`` and
``c1`` to the forwards it has timed and picks the ``k`` that minimises the time per emitted token. It depends on
wall-clock time, so it is used only where draft lengths cannot change the output: greedy decoding, and deterministic
drafts under sampling (verified by coupling, ``verify.verify_chain_coupled``: every token is what plain sampling
draws at its position). For sampled drafts (a draft model's, verified by Leviathan et al.'s rule) it runs on the
session's fixed cost hint instead (``ModelSession.forward_cost``): draft lengths then depend only on what was
accepted, so seeded runs repeat.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

Cost = tuple[float, float, float]


def cost_of(model: tuple[float, ...], width: int) -> float:
    """The modelled cost of a forward over ``width`` tokens; ``model`` is ``(c0, c1)`` or ``(c0, c1, cb)``."""
    c0, c1 = model[0], model[1]
    cb = model[2] if len(model) > 2 else 0.0
    return c0 + c1 * width + (cb if width > 1 else 0.0)


#: a further token in a verified block is "cheap" below this share of a one-token forward (transformers on a CPU:
#: 0.09; llama.cpp: 0.8): where drafters default to their more speculative modes (iad's fallback, suffix's trees)
CHEAP_BLOCK_TOKEN = 0.2


def cheap_block_tokens(share: float | None) -> bool:
    """Whether a further block token (``share`` from :func:`block_token_share`; None: unknown) counts as cheap."""
    return share is not None and share < CHEAP_BLOCK_TOKEN


def block_token_share(model: tuple[float, ...] | None) -> float | None:
    """What one more token in a block costs, as a share of a one-token forward (``None`` without a model)."""
    if not model:
        return None
    one = cost_of(model, 1)
    return (cost_of(model, 2) - one) / one if one > 0 else None


def _as_cost(model: tuple[float, ...] | None) -> Cost | None:
    if model is None:
        return None
    return float(model[0]), float(model[1]), float(model[2]) if len(model) > 2 else 0.0


class DraftLengthController:
    """Per-row draft length from a cost model ``c0 + c1 * width + cb * (width > 1)`` and an acceptance estimate per
    row."""

    #: the draft length tried before the cost of a forward is known (no timings fitted, no hint): short, so that a
    #: runtime where drafting cannot pay loses little while the first forwards are timed
    COLD_DRAFT = 2
    #: what probing a row that does not draft may cost, as a share of its plain steps (the "never slower" budget)
    PROBE_SHARE = 0.03

    def __init__(self, rows: int, history: int = 48, prior_acceptance: float = 0.8, decay: float = 0.8,
                 probe_every: int = 8, fixed_cost: tuple[float, ...] | None = None,
                 prior_cost: tuple[float, ...] | None = None, shadows: bool = False):
        self.samples: deque[tuple[int, float]] = deque(maxlen=history)
        self._fitted: Cost | None = None
        self._unfitted = 0  # forwards recorded since the last fit
        #: ``(c0, c1)`` or ``(c0, c1, cb)`` used instead of timings (deterministic draft lengths)
        self.fixed_cost: Cost | None = _as_cost(fixed_cost)
        #: the session's cost hint, used until timed forwards can be fitted
        self.prior_cost: Cost | None = _as_cost(prior_cost)
        self.prior_acceptance = prior_acceptance
        #: after this many steps without drafting, a row drafts again to re-measure its acceptance; the wait doubles
        #: after each probe that was not worth it
        self.probe_every = probe_every
        self.idle = [0] * rows
        self.wait = [probe_every] * rows
        self.probing = [False] * rows
        #: what a row not drafting may spend on probes, in units of plain steps: each plain step adds
        #: ``PROBE_SHARE``, each probe pays what it costs beyond a plain step; so probing never costs more than
        #: ``PROBE_SHARE`` of the plain steps, whatever triggers it (the wait, or a fresh draft)
        self.bank = [0.0] * rows
        self.decay = decay
        # acceptance as a decayed ratio of accepted tokens to acceptance trials (accepted + first rejection)
        self.hits = [4.0 * prior_acceptance] * rows
        self.trials = [4.0] * rows
        #: the caller checks drafts at steps that verify none against the tokens that follow (:meth:`record_outcome`),
        #: so a row that stopped drafting learns its acceptance for free and never probes
        self.shadows = shadows

    def add_row(self) -> int:
        """One more row, with the priors (where rows come and go: vLLM's proposer gives each request one, reused
        through :meth:`reset_row` once the request has ended); returns its index."""
        for values, prior in ((self.idle, 0), (self.wait, self.probe_every), (self.probing, False),
                              (self.bank, 0.0), (self.hits, 4.0 * self.prior_acceptance), (self.trials, 4.0)):
            values.append(prior)  # type: ignore[attr-defined]
        return len(self.idle) - 1

    def reset_row(self, row: int) -> None:
        """Back to the priors: the row now holds another request."""
        self.idle[row], self.wait[row], self.probing[row], self.bank[row] = 0, self.probe_every, False, 0.0
        self.hits[row], self.trials[row] = 4.0 * self.prior_acceptance, 4.0

    #: forwards timed between two least-squares fits of the cost model (a fit per step would cost more than the
    #: drafting decisions it informs on a fast runtime)
    REFIT_EVERY = 8

    def record_forward(self, width: int, seconds: float) -> None:
        if self.fixed_cost is None:
            self.samples.append((width, seconds))
            self._unfitted += 1

    def new_phase(self, row: int) -> None:
        """The drafter found a new source of drafts for ``row`` (a fresh draft): probe it at the next step, as soon
        as the probing budget allows (a drafter that re-aligns on noise cannot make the row draft at a loss)."""
        self.idle[row] = max(self.idle[row], self.wait[row] - 1)

    def record_row(self, row: int, drafted: int, accepted: int) -> None:
        if drafted == 0:
            return
        if self.probing[row]:  # a probe: drafting is back in phase when most of it was accepted
            self.probing[row] = False
            if 2 * accepted >= drafted:  # a new phase: forget the old acceptance, draft again
                self.wait[row] = self.probe_every
                self.hits[row], self.trials[row] = 4.0 * self.prior_acceptance, 4.0
                return
            self.wait[row] = 2 * self.wait[row]
        self.record_outcome(row, accepted, accepted < drafted)

    def record_outcome(self, row: int, accepted: int, rejected: bool) -> None:
        """A draft's outcome: ``accepted`` tokens, then a rejection or not. The loop also calls this for a *shadow*
        draft, one it proposed at a step that verified none and then checked against the tokens the target went on
        to emit: under greedy decoding and coupling those do not depend on drafts, so its outcome is what verifying
        it would have given."""
        self.hits[row] = self.decay * self.hits[row] + accepted
        self.trials[row] = self.decay * self.trials[row] + accepted + (1 if rejected else 0)

    def acceptance(self, row: int) -> float:
        return min(max(self.hits[row] / max(self.trials[row], 1e-9), 0.0), 0.995)

    def cost_model(self) -> Cost | None:
        """``(c0, c1, cb)`` by least squares, or None until forwards of different widths were timed. ``cb`` is
        fitted where both one-token and (two or more different) multi-token forwards were timed, else 0."""
        if self.fixed_cost is not None:
            return self.fixed_cost
        if len(self.samples) < 4:
            return self.prior_cost
        if self._fitted is not None and self._unfitted < self.REFIT_EVERY:
            return self._fitted
        self._unfitted = 0
        fit = self._fit()
        self._fitted = fit
        return fit

    def _fit(self) -> Cost | None:
        widths = np.array([w for w, _ in self.samples], dtype=np.float64)
        times = np.array([t for _, t in self.samples], dtype=np.float64)
        if np.ptp(widths) <= 0:
            return self.prior_cost
        multi = widths > 1
        if multi.any() and (~multi).any() and np.unique(widths[multi]).size >= 2:
            design = np.stack([np.ones_like(widths), widths, multi.astype(np.float64)], axis=1)
        else:
            design = np.stack([np.ones_like(widths), widths], axis=1)
        coef = np.linalg.lstsq(design, times, rcond=None)[0]
        c1 = max(float(coef[1]), 0.0)
        cb = max(float(coef[2]), 0.0) if coef.size > 2 else 0.0
        c0 = max(float(np.mean(times - c1 * widths - cb * multi)), 1e-6)
        return c0, c1, cb

    def limit(self, row: int, cap: int, pending: int) -> int:
        """The draft length in ``0..cap`` with the least expected time per emitted token.

        0 (plain decoding) when no draft pays for its cost; after ``probe_every`` such steps the row drafts anyway,
        so a change in acceptance (IAD re-aligned with its input) is noticed: as many tokens as the probing budget
        allows (``PROBE_SHARE`` of the plain steps waited; see :meth:`_probe`). ``probing[row]`` says whether the
        length returned is a probe's. With ``shadows`` a row never probes: shadow drafts tell it when to draft
        again.
        """
        self.probing[row] = False  # a probe whose draft came back empty was no probe
        if cap <= 0:
            return cap
        model = self.cost_model()
        if model is None:
            # nothing known of the cost yet: short drafts while they are accepted, plain steps otherwise, which also
            # gives the fit its two widths
            return min(cap, self.COLD_DRAFT) if self.acceptance(row) >= 0.5 else 0
        a = self.acceptance(row)
        best, best_time = 0, cost_of(model, pending)
        expected = 1.0
        term = 1.0
        # no draft of length >= k emits more than 1 / (1 - a) tokens on average and none costs less than length k:
        # once cost(k) / (1 - a)^-1 is no better than the best, no longer draft is either
        most = 1.0 / (1.0 - a) if a < 1.0 and min(model[1:]) >= 0.0 else math.inf  # (a hint may hold c1 < 0)
        for k in range(1, cap + 1):
            cost = cost_of(model, pending + k)
            if cost / most >= best_time:
                break
            term *= a
            expected += term
            per_token = cost / expected
            if per_token < best_time - 1e-12:
                best, best_time = k, per_token
        if best == 0 and not self.shadows:
            self.idle[row] += 1
            self.bank[row] = min(self.bank[row] + self.PROBE_SHARE, 4.0)
            if self.idle[row] >= self.wait[row]:
                return self._probe(row, model, cap, pending)
        else:
            self.idle[row] = 0
            self.wait[row] = self.probe_every
        return best

    def pays(self, row: int, width: int, depth: int, pending: int) -> bool:
        """Whether verifying a tree of ``width`` nodes and ``depth`` levels after ``pending`` tokens is expected to
        cost less per emitted token than a plain step, at the row's acceptance: a tree pays for every node but
        emits at most one path. (``limit`` models chains, whose width is their depth.)"""
        model = self.cost_model()
        if model is None:
            return True
        a = self.acceptance(row)
        expected = (1.0 - a ** (depth + 1)) / (1.0 - a)
        return cost_of(model, pending + width) / expected < cost_of(model, pending)

    def _probe(self, row: int, model: Cost, cap: int, pending: int) -> int:
        """A draft for a row that has stopped drafting, to notice a new phase (IAD re-aligned with its input): as
        many tokens as the probing budget allows (``PROBE_SHARE`` of the steps waited, at least one token)."""
        plain = cost_of(model, pending)
        budget = plain * (1.0 + self.bank[row])
        if cost_of(model, pending + 1) > budget + 1e-12:
            return 0  # even one draft token is over budget: keep waiting while the budget grows
        probe = 1
        while probe < cap and cost_of(model, pending + probe + 1) <= budget + 1e-12:
            probe += 1
        self.bank[row] -= (cost_of(model, pending + probe) - plain) / plain
        self.idle[row] = 0
        self.probing[row] = True
        return probe
