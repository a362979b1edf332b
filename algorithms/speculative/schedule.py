"""Draft lengths chosen from measured cost and observed acceptance (greedy decoding only).

Verifying ``k`` draft tokens yields ``E(k) = (1 - a^(k+1)) / (1 - a)`` tokens per target forward for a per-token
acceptance ``a`` (Leviathan et al. 2023), and a forward over ``w`` tokens costs about ``c0 + c1 * w + cb * (w > 1)``:
``cb`` is the one-off price of leaving the one-token path (llama.cpp, Q4_1, 2 threads: 1 token 9.2 ms, 2 tokens
16.6 ms, then about 3.4 ms per token; a linear model would make short drafts look cheap). On a GPU
``c1`` is near 0 and long drafts are free; on a CPU it is not (llama.cpp's quantised kernels cost nearly as much
per token in a batch as alone), so the best ``k`` differs by runtime and machine. This controller fits ``c0`` and
``c1`` to the forwards it has timed and picks the ``k`` that minimises the time per emitted token. It depends on
wall-clock time, so it is used only where draft lengths cannot change the output: greedy decoding. Under
sampling it runs on the session's fixed cost hint instead (``ModelSession.forward_cost``): draft lengths then
depend only on what was accepted, so seeded runs repeat.
"""

from __future__ import annotations

from collections import deque

import numpy as np

Cost = tuple[float, float, float]


def cost_of(model: tuple[float, ...], width: int) -> float:
    """The modelled cost of a forward over ``width`` tokens; ``model`` is ``(c0, c1)`` or ``(c0, c1, cb)``."""
    c0, c1 = model[0], model[1]
    cb = model[2] if len(model) > 2 else 0.0
    return c0 + c1 * width + (cb if width > 1 else 0.0)


def block_token_share(model: tuple[float, ...] | None) -> float | None:
    """What one more token in a block costs, as a share of a one-token forward (``None`` without a model)."""
    if not model:
        return None
    one = cost_of(model, 1)
    return (cost_of(model, 2) - one) / one if one > 0 else None


class DraftLengthController:
    """Per-row draft length from a cost model ``c0 + c1 * width + cb * (width > 1)`` and an acceptance estimate per
    row."""

    #: draft lengths tried, in turn, until the cost model can be fitted
    PROBES = (8, 2, 16, 4)

    def __init__(self, rows: int, history: int = 48, prior_acceptance: float = 0.8, decay: float = 0.8,
                 probe_every: int = 8, fixed_cost: tuple[float, ...] | None = None):
        self.samples: deque[tuple[int, float]] = deque(maxlen=history)
        #: ``(c0, c1)`` or ``(c0, c1, cb)`` used instead of timings (deterministic draft lengths)
        self.fixed_cost: Cost | None = None
        if fixed_cost is not None:
            self.fixed_cost = (float(fixed_cost[0]), float(fixed_cost[1]),
                               float(fixed_cost[2]) if len(fixed_cost) > 2 else 0.0)
        #: after this many steps without drafting, a row drafts again to re-measure its acceptance
        self.probe_every = probe_every
        self.idle = [0] * rows
        self.decay = decay
        # acceptance as a decayed ratio of accepted tokens to acceptance trials (accepted + first rejection)
        self.hits = [4.0 * prior_acceptance] * rows
        self.trials = [4.0] * rows

    def record_forward(self, width: int, seconds: float) -> None:
        if self.fixed_cost is None:
            self.samples.append((width, seconds))

    def record_row(self, row: int, drafted: int, accepted: int) -> None:
        if drafted == 0:
            return
        rejected = 1 if accepted < drafted else 0
        self.hits[row] = self.decay * self.hits[row] + accepted
        self.trials[row] = self.decay * self.trials[row] + accepted + rejected

    def acceptance(self, row: int) -> float:
        return min(max(self.hits[row] / max(self.trials[row], 1e-9), 0.0), 0.995)

    def cost_model(self) -> Cost | None:
        """``(c0, c1, cb)`` by least squares, or None until forwards of different widths were timed. ``cb`` is
        fitted where both one-token and (two or more different) multi-token forwards were timed, else 0."""
        if self.fixed_cost is not None:
            return self.fixed_cost
        if len(self.samples) < 4:
            return None
        widths = np.array([w for w, _ in self.samples], dtype=np.float64)
        times = np.array([t for _, t in self.samples], dtype=np.float64)
        if np.ptp(widths) <= 0:
            return None
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

        0 (plain decoding) when no draft pays for its cost; every ``probe_every`` such steps the row drafts
        anyway, so a change in acceptance (IAD re-aligned with its input) is noticed: as many tokens as fit in three
        times a plain step's cost (all of ``cap`` on transformers, 4 tokens on llama.cpp, where a 64-token probe
        would cost 25 steps).
        """
        if cap <= 0:
            return cap
        model = self.cost_model()
        if model is None:
            # not fitted yet: probe a few different widths rather than paying for the drafter's longest draft
            return min(cap, self.PROBES[len(self.samples) % len(self.PROBES)])
        a = self.acceptance(row)
        best, best_time = 0, cost_of(model, pending)
        expected = 1.0
        term = 1.0
        for k in range(1, cap + 1):
            term *= a
            expected += term
            per_token = cost_of(model, pending + k) / expected
            if per_token < best_time - 1e-12:
                best, best_time = k, per_token
        if best == 0:
            self.idle[row] += 1
            if self.idle[row] >= self.probe_every:
                self.idle[row] = 0
                budget = 3.0 * cost_of(model, pending)
                probe = 1
                while probe < cap and cost_of(model, pending + probe + 1) <= budget + 1e-12:
                    probe += 1
                return probe
        else:
            self.idle[row] = 0
        return best
