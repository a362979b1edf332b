"""Guarded import of transformers and the version facts this adapter depends on."""

from __future__ import annotations

import inspect
from typing import Any

from anydecode.algorithms.contracts.errors import RuntimeAdapterError


def import_transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise RuntimeAdapterError(f"transformers is not installed ({exc}): pip install 'anydecode[hf]'") from None
    return transformers


def cache_keyword(model: Any) -> str:
    """The forward() keyword of the KV cache: ``cache`` from transformers 5.24 on, ``past_key_values`` before."""
    params = inspect.signature(model.forward).parameters
    if "cache" in params:
        return "cache"
    if "past_key_values" in params:
        return "past_key_values"
    raise RuntimeAdapterError(
        f"{type(model).__name__}.forward takes neither `cache` nor `past_key_values`; "
        f"anydecode needs a model with a KV cache (transformers {import_transformers().__version__})"
    )


def output_cache(outputs: Any) -> Any:
    cache = getattr(outputs, "cache", None)
    return cache if cache is not None else outputs.past_key_values
