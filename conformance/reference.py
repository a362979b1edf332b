"""Independent float64 reference of the ``sample`` target distribution, written from the definitions.

Temperature divides the logits; top-k keeps the k largest (ties at the k-th value kept); top-p keeps the most
likely tokens, in order, while the mass before a token is below p; min-p keeps tokens whose probability is at
least min_p times the largest. This module does not use anydecode's warpers: it is what they are checked against.
"""

from __future__ import annotations

import numpy as np


def softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    finite = np.isfinite(x)
    out = np.zeros_like(x)
    if not finite.any():
        return out
    z = np.exp(x[finite] - x[finite].max())
    out[finite] = z / z.sum()
    return out


def target_distribution(logits: np.ndarray, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                        min_p: float = 0.0, order: tuple[str, ...] = ("temperature", "top_k", "top_p", "min_p")
                        ) -> np.ndarray:
    """Next-token probabilities of ancestral sampling with these settings, applied in ``order``."""
    x = np.asarray(logits, dtype=np.float64).copy()
    if temperature == 0:
        out = np.zeros_like(x)
        out[int(np.argmax(x))] = 1.0
        return out
    for step in order:
        if step == "temperature":
            x = x / temperature
        elif step == "top_k" and 0 < top_k < len(x):
            kth = np.sort(x)[::-1][top_k - 1]
            x = np.where(x >= kth, x, -np.inf)
        elif step == "top_p" and top_p < 1.0:
            p = softmax(x)
            order_idx = np.argsort(-x, kind="stable")  # ties: lower token id first
            before = 0.0
            keep = np.zeros(len(x), dtype=bool)
            for i, idx in enumerate(order_idx):
                if i > 0 and before >= top_p:
                    break
                keep[idx] = True
                before += p[idx]
            x = np.where(keep, x, -np.inf)
        elif step == "min_p" and min_p > 0:
            p = softmax(x)
            x = np.where(p >= min_p * p.max(), x, -np.inf)
    return softmax(x)


def planted_top_p_before_temperature(logits: np.ndarray, temperature: float = 1.0, top_k: int = 0,
                                     top_p: float = 1.0, min_p: float = 0.0) -> np.ndarray:
    """A known bug for negative controls: the nucleus cut taken before temperature scaling."""
    return target_distribution(logits, temperature, top_k, top_p, min_p,
                               order=("top_k", "top_p", "temperature", "min_p"))
