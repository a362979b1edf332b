"""Exact enumeration (float64) of the output distribution of a decoder that exposes its per-step distribution."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from .toy import ToyModel

Sequence_ = tuple[int, ...]
#: ``step(model, prefix_generated, prompt) -> next-token probabilities`` of the decoder under test
StepDistribution = Callable[[ToyModel, Sequence_, Sequence_], np.ndarray]


def enumerate_sequences(model: ToyModel, prompt: Sequence[int], max_new_tokens: int, step: StepDistribution,
                        min_prob: float = 0.0) -> dict[Sequence_, float]:
    """Probability of every generated sequence (EOS included, or cut at ``max_new_tokens``).

    ``step`` gives the decoder's next-token distribution after a generated prefix. Branches below ``min_prob``
    are dropped (their mass is reported as missing by ``total_variation``'s normalisation check).
    """
    eos = model.eos_token_id
    out: dict[Sequence_, float] = {}
    frontier: list[tuple[Sequence_, float]] = [((), 1.0)]
    prompt_t = tuple(prompt)
    while frontier:
        gen, mass = frontier.pop()
        if len(gen) == max_new_tokens or (gen and eos is not None and gen[-1] == eos):
            out[gen] = out.get(gen, 0.0) + mass
            continue
        probs = np.asarray(step(model, gen, prompt_t), dtype=np.float64)
        for token in np.nonzero(probs > 0)[0]:
            p = mass * float(probs[token])
            if p > min_prob:
                frontier.append((gen + (int(token),), p))
    return out


def total_variation(p: Mapping[Sequence_, float], q: Mapping[Sequence_, float]) -> float:
    """Total variation distance between two distributions given as dictionaries."""
    keys = set(p) | set(q)
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in keys)


def tv_vectors(p: np.ndarray, q: np.ndarray) -> float:
    return 0.5 * float(np.abs(np.asarray(p, np.float64) - np.asarray(q, np.float64)).sum())
