"""Kernels for anydecode's hot loops: each a Triton kernel beside a torch reference, reached through a dispatcher.

Cores and adapters call only these functions (from :mod:`.dispatch`); each runs the Triton kernel for CUDA tensors
when triton is installed, and the vectorised torch reference otherwise (see docs/kernels.md):

* :func:`apply_token_masks`: packed grammar bitmasks and ASAp log-EFG corrections for all rows of a step;
* :func:`verify_chain` / :func:`verify_chain_greedy`: speculative chain verification with in-kernel warping;
* :func:`sample_tokens`: the token verification draws for a row without drafts (plain sampling on the streams);
* :func:`sample_residual`, :func:`verify_tree_node`: residual sampling and SpecInfer's per-child residual updates;
* :func:`diverse_beam_step`: Hamming penalty and per-group top-k candidates of diverse beam search;
* :func:`warp_probs`: the sampler's temperature / top-k / top-p / min-p warp, batched with per-row settings;
* :func:`launches`: how many times each Triton kernel ran (to confirm which path did the work);
* :func:`use`: force ``"triton"`` (interpreted on CPU tensors), ``"reference"`` or ``"auto"`` in a block.

Randomness comes from the counter-based generator of :mod:`.rng`. :mod:`.cpu_linear` is the CPU linear layer of
speculative verification on CPU. Importing this package imports torch only; triton is imported when a kernel runs.
"""

from .dispatch import (
    apply_token_masks,
    backend,
    diverse_beam_step,
    launches,
    mode,
    sample_residual,
    sample_tokens,
    triton_available,
    use,
    verify_chain,
    verify_chain_greedy,
    verify_tree_node,
    warp_probs,
)

__all__ = [
    "apply_token_masks",
    "backend",
    "diverse_beam_step",
    "launches",
    "mode",
    "sample_residual",
    "sample_tokens",
    "triton_available",
    "use",
    "verify_chain",
    "verify_chain_greedy",
    "verify_tree_node",
    "warp_probs",
]
