"""Speculative decoding: lossless chain and tree verification, drafters (draft model, prompt lookup, IAD, ADED)
and the decoders that run them on a model session."""

from .draft import AdaptiveDraftLength, Draft, Drafter
from .verify import Coins, SeededCoins, residual_distribution, verify_chain, verify_chain_greedy, verify_tree

__all__ = [
    "AdaptiveDraftLength",
    "Coins",
    "Draft",
    "Drafter",
    "SeededCoins",
    "residual_distribution",
    "verify_chain",
    "verify_chain_greedy",
    "verify_tree",
]
