"""The search decoders as registrable objects: ``beam``, ``dbs``, ``deal`` and ``best_of_n``."""

from __future__ import annotations

from ..contracts.decoder import Decoder
from .beam import BeamConfig, DiverseBeamConfig, run_beam, run_diverse_beam
from .best_of_n import BestOfNConfig, run_best_of_n
from .deal import DealConfig, run_deal

BEAM = Decoder(
    name="beam",
    config_cls=BeamConfig,
    kind="loop",
    description="beam search (as transformers' num_beams), every beam of a step in one forward pass",
    run_fn=run_beam,
    claim="search",
    claim_note="transformers' own beam search (num_beams), sequences and scores",
)

DIVERSE_BEAM = Decoder(
    name="dbs",
    config_cls=DiverseBeamConfig,
    kind="loop",
    description="diverse beam search (Vijayakumar et al.): beam groups with a Hamming or n-gram diversity penalty",
    run_fn=run_diverse_beam,
    claim="search",
    claim_note="transformers 4.x group beam search (Hamming diversity; recorded outputs)",
)

DEAL = Decoder(
    name="deal",
    config_cls=DealConfig,
    kind="loop",
    description="DeAL (Huang et al. 2024): top-k expansion scored by likelihood + lam * reward of a greedy lookahead",
    run_fn=run_deal,
    claim="search",
    claim_note="with lam=0, beam search of the same width; with a reward, the paper's heuristic search",
)

BEST_OF_N = Decoder(
    name="best_of_n",
    config_cls=BestOfNConfig,
    kind="loop",
    description="num_samples samples with the sample settings, the best by reward (ties: log-likelihood)",
    run_fn=run_best_of_n,
    claim="best-of-n",
    claim_note="the best by reward (ties: log-likelihood) of the N samples `sample` draws with the same seed",
)
