"""transformers adapter: ``custom_generate=anydecode.plugins.hf.generate``, ``logits_processor(...)`` and the
``hf`` runtime.

``import anydecode.plugins.hf`` imports transformers lazily: ``generate`` declares the settings of every
registered decoder when first used by ``model.generate``.
"""

from __future__ import annotations

from typing import Any

from .generate import generate, open_context, refresh_signature
from .processors import make_logits_processor as logits_processor
from .runtime import HFModel, HFRuntime
from .session import HFSession
from .tokenizer import HFTokenizer


def load_default(progress: Any = None) -> tuple[Any, Any]:
    """The embedded default model and its tokenizer in transformers (converted once, then cached)."""
    from anydecode.models import load_hf

    return load_hf(progress=progress)

__all__ = ["HFModel", "HFRuntime", "HFSession", "HFTokenizer", "generate", "load_default", "logits_processor",
           "open_context", "refresh_signature"]
