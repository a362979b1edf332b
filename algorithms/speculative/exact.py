"""Exact output laws of verification code: coins that enumerate every random decision with its probability.

``enumerate_outcomes(run)`` calls ``run(coins)`` once per distinct sequence of decisions (depth first) and
returns the probability of each outcome ``run`` returns, in float64, so tests compare the real verification code,
not a re-derivation of it, with the target distribution.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import torch

from .verify import Coins


class ScriptedCoins(Coins):
    """Takes decisions from a script; records the probability of the path and where new decisions branched."""

    def __init__(self, script: list[int]):
        self.script = list(script)
        self.position = 0
        self.weight = 1.0
        self.arity: dict[int, int] = {}

    def _decide(self, options: Sequence[tuple[object, float]]) -> object:
        if self.position >= len(self.script):
            self.script.append(0)
            self.arity[self.position] = len(options)
        value, prob = options[self.script[self.position]]
        self.weight *= prob
        self.position += 1
        return value

    def accept(self, prob: torch.Tensor) -> torch.Tensor:
        flat = prob.reshape(-1).tolist()
        out = []
        for p in flat:
            if p >= 1.0:
                out.append(True)
            elif p <= 0.0:
                out.append(False)
            else:
                out.append(bool(self._decide([(True, p), (False, 1.0 - p)])))
        return torch.tensor(out, dtype=torch.bool).reshape(prob.shape)

    def choose(self, probs: torch.Tensor) -> torch.Tensor:
        picks = []
        for row in probs.to(torch.float64):
            row = row / row.sum()  # as the real draw (``categorical``) reads its row: proportionally
            options = [(i, float(v)) for i, v in enumerate(row.tolist()) if v > 0]
            picks.append(self._decide(options))
        return torch.tensor(picks, dtype=torch.long)


def enumerate_outcomes(run: Callable[[Coins], Hashable]) -> dict[Hashable, float]:
    """Probability of each value ``run(coins)`` can return, over all decisions the coins can take."""
    law: dict[Hashable, float] = {}
    stack: list[list[int]] = [[]]
    while stack:
        script = stack.pop()
        coins = ScriptedCoins(script)
        outcome = run(coins)
        if coins.weight > 0:
            law[outcome] = law.get(outcome, 0.0) + coins.weight
        for position in range(len(script), len(coins.script)):
            for alternative in range(1, coins.arity[position]):
                stack.append(coins.script[:position] + [alternative])
    return law
