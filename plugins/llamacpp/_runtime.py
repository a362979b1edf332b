"""Guarded import of llama_cpp and the private attributes this adapter relies on."""

from __future__ import annotations

from typing import Any

from anydecode.algorithms.contracts.errors import RuntimeAdapterError

#: llama-cpp-python releases whose private ``Llama._ctx``/``_batch`` layout this adapter was checked against
TESTED_VERSIONS = ("0.3.",)
_PRIVATE = ("_ctx", "_batch", "input_ids", "n_tokens", "n_batch", "_n_vocab")


def import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:
        raise RuntimeAdapterError(
            f"llama-cpp-python is not installed ({exc}): pip install 'anydecode[llamacpp]'"
        ) from None
    return llama_cpp


def check_llama(llm: Any) -> None:
    """Fail loudly when ``llm`` is not a Llama this adapter knows how to drive."""
    llama_cpp = import_llama_cpp()
    if not isinstance(llm, llama_cpp.Llama):
        raise RuntimeAdapterError(f"expected a llama_cpp.Llama, got {type(llm).__name__}")
    version = getattr(llama_cpp, "__version__", "?")
    missing = [name for name in _PRIVATE if not hasattr(llm, name)]
    if missing or not version.startswith(TESTED_VERSIONS):
        raise RuntimeAdapterError(
            f"llama-cpp-python {version} changed the Llama internals anydecode uses "
            f"(missing: {missing or 'none'}; tested: {', '.join(v + 'x' for v in TESTED_VERSIONS)})"
        )
