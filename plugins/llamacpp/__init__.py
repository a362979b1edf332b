"""llama.cpp adapter (llama-cpp-python): model session, ``generate``, logits processors, draft models and the
``llamacpp`` runtime.

``import anydecode.plugins.llamacpp`` does not import llama_cpp; the functions do, when called.
"""

from .generate import GenerationOutput, generate
from .processors import logits_processor_list
from .runtime import LlamaCppRuntime, default_threads, load_default, open_context

__all__ = ["GenerationOutput", "LlamaCppRuntime", "default_threads", "generate", "load_default", "logits_processor_list",
           "open_context"]
