"""Token selection: sampling warpers (temperature, top-k, top-p, min-p), greedy and seeded categorical draws."""

from .select import TokenSelector, categorical, make_generator
from .warpers import SamplingWarp, warp_logits, warped_probs

__all__ = ["SamplingWarp", "TokenSelector", "categorical", "make_generator", "warp_logits", "warped_probs"]
