"""vLLM adapter: ``--logits-processors anydecode.plugins.vllm:AnydecodeLogitsProcessor`` for transform decoders,
``generate(llm, prompts, decoder=...)`` for loop decoders over the engine, and the drafters (``iad``, ``aded``,
``prompt_lookup``) as speculative proposers: ``LLM(model, **speculative_args("iad", num_speculative_tokens=8))``
or ``--speculative-config '{"model": "anydecode.plugins.vllm.proposer.IADProposer", ...}'``.

Importing this package does not import vLLM; ``AnydecodeLogitsProcessor`` is loaded on first access (vLLM
resolves ``module:Class`` with getattr, so the lazy attribute works for ``--logits-processors`` too).
"""

from __future__ import annotations

from typing import Any

__all__ = ["AnydecodeLogitsProcessor", "generate", "speculative_args"]


def __getattr__(name: str) -> Any:
    if name == "AnydecodeLogitsProcessor":
        from .processor import AnydecodeLogitsProcessor

        return AnydecodeLogitsProcessor
    if name == "generate":
        from .offline import generate

        return generate
    if name == "speculative_args":
        from .proposer import speculative_args

        return speculative_args
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
