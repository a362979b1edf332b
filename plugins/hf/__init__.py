"""transformers adapter: ``custom_generate=anydecode.plugins.hf.generate`` and ``logits_processor(...)``.

``import anydecode.plugins.hf`` imports transformers lazily: ``generate`` declares the settings of every
registered decoder when first used by ``model.generate``.
"""

from __future__ import annotations

from typing import Any

from anydecode.algorithms.contracts.errors import RuntimeAdapterError

from .generate import generate, refresh_signature, run_decoder
from .processors import make_logits_processor as logits_processor
from .session import HFSession


def load_default(progress: Any = None) -> tuple[Any, Any]:
    """The embedded default model and its tokenizer in transformers (converted once, then cached)."""
    from anydecode.models import load_hf

    return load_hf(progress=progress)


try:
    refresh_signature()
except RuntimeAdapterError:  # transformers is missing: generate() says so when called
    pass

__all__ = ["HFSession", "generate", "load_default", "logits_processor", "refresh_signature", "run_decoder"]
