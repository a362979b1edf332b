"""Finished hypotheses of one beam group: the best ``capacity`` ended sequences and the early-stop test.

Scores are length-normalised, ``sum_logprobs / generated_len ** length_penalty``, with ``generated_len`` counting
the end-of-sequence token, as transformers' beam search does. ``is_done`` decides when no running beam can
beat the worst kept hypothesis any more:

* ``early_stopping=True``: as soon as ``capacity`` hypotheses have ended;
* ``early_stopping=False``: when the best running score, normalised by the current length, cannot beat the
  worst kept one (a heuristic when ``length_penalty > 0``);
* ``early_stopping="never"``: like False, but with a positive length penalty the best score is bounded with the
  longest possible length (the canonical, exact bound).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Hypothesis:
    """An ended (or length-cut) sequence with its normalised score."""

    score: float
    tokens: list[int]
    #: the unnormalised score it ended with (sum of log-probabilities, diversity penalties included)
    sum_score: float
    #: the search's own extra value (DeAL: the reward), else 0
    bonus: float = 0.0


class FinishedHypotheses:
    """The best ``capacity`` finished sequences of one (prompt, group) pair."""

    def __init__(self, capacity: int, length_penalty: float, early_stopping: bool | str, max_new_tokens: int):
        self.capacity = capacity
        self.length_penalty = length_penalty
        self.early_stopping = early_stopping
        self.max_new_tokens = max_new_tokens
        self.beams: list[Hypothesis] = []
        self.worst_score = 1e9

    def __len__(self) -> int:
        return len(self.beams)

    def normalise(self, sum_score: float, generated_len: int) -> float:
        return sum_score / (generated_len ** self.length_penalty)

    def add(self, tokens: list[int], sum_score: float, generated_len: int, bonus: float = 0.0) -> None:
        """Keep the hypothesis if there is room or it beats the worst kept one (which is then dropped)."""
        score = self.normalise(sum_score, generated_len) + bonus
        if len(self) < self.capacity or score > self.worst_score:
            self.beams.append(Hypothesis(score, list(tokens), sum_score, bonus))
            if len(self) > self.capacity:
                ranked = sorted((h.score, i) for i, h in enumerate(self.beams))
                del self.beams[ranked[0][1]]
                self.worst_score = ranked[1][0]
            else:
                self.worst_score = min(score, self.worst_score)

    def is_done(self, best_sum_score: float, generated_len: int, bonus: float = 0.0) -> bool:
        """True when no running beam (best unnormalised score ``best_sum_score``) can still get in."""
        if len(self) < self.capacity:
            return False
        if self.early_stopping is True:
            return True
        if self.early_stopping == "never" and self.length_penalty > 0.0:
            best = best_sum_score / (self.max_new_tokens ** self.length_penalty)
        else:
            best = best_sum_score / (generated_len ** self.length_penalty)
        return self.worst_score >= best + bonus


def best_hypotheses(groups: list[FinishedHypotheses], count: int) -> list[Hypothesis]:
    """The ``count`` best hypotheses over the groups of one prompt, best first (ties: the later kept first).

    A sequence that ended in several groups (typically the lone end-of-sequence token, which no diversity penalty
    reaches because it never runs on) is returned once; repeats only fill the list when too few distinct
    sequences ended. transformers 4.x returns such repeats as they come.
    """
    pool = [h for group in groups for h in group.beams]
    ranked = sorted(pool, key=lambda h: h.score)
    best_first = [ranked.pop() for _ in range(len(ranked))]
    unique: list[Hypothesis] = []
    repeats: list[Hypothesis] = []
    seen: set[tuple[int, ...]] = set()
    for hyp in best_first:
        key = tuple(hyp.tokens)
        (repeats if key in seen else unique).append(hyp)
        seen.add(key)
    return (unique + repeats)[:count]
