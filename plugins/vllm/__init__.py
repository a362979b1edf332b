"""vLLM adapter: ``--logits-processors anydecode.plugins.vllm:AnydecodeLogitsProcessor`` for transform decoders,
``generate(llm, prompts, decoder=...)`` for loop decoders over the engine.

Importing this package does not import vLLM; ``AnydecodeLogitsProcessor`` is loaded on first access (vLLM
resolves ``module:Class`` with getattr, so the lazy attribute works for ``--logits-processors`` too).
"""

from __future__ import annotations

from typing import Any

__all__ = ["AnydecodeLogitsProcessor", "generate"]


def __getattr__(name: str) -> Any:
    if name == "AnydecodeLogitsProcessor":
        from .processor import AnydecodeLogitsProcessor

        return AnydecodeLogitsProcessor
    if name == "generate":
        from .offline import generate

        return generate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
