"""llama.cpp adapter (llama-cpp-python): model session, ``generate``, logits processors and draft models.

``import anydecode.plugins.llamacpp`` does not import llama_cpp; the functions do, when called.
"""

from .generate import GenerationOutput, generate, load_default
from .processors import logits_processor_list

__all__ = ["GenerationOutput", "generate", "load_default", "logits_processor_list"]
