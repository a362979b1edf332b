"""anydecode: decoding algorithms from papers, written once, for transformers, vLLM and llama.cpp.

``import anydecode`` imports no runtime: adapters live in ``anydecode.plugins.<runtime>`` and import their
runtime only when used.
"""

from anydecode.algorithms.contracts import (
    AnydecodeError,
    ComponentSpec,
    ConfigError,
    DecodeContext,
    DecodeResult,
    Decoder,
    DecoderConfig,
    GeneratedSequence,
    Generation,
    LogitsTransform,
    ModelSession,
    RegistryError,
    Runtime,
    RuntimeAdapterError,
    RuntimeProcessors,
    SamplingConfig,
    StoppingRule,
    TokenizerView,
    TransformContext,
    config_field,
)

from .hookspecs import hookimpl
from .registry import get_decoder, get_registry

__version__ = "0.1.0"

__all__ = [
    "AnydecodeError",
    "ComponentSpec",
    "ConfigError",
    "DecodeContext",
    "DecodeResult",
    "Decoder",
    "DecoderConfig",
    "GeneratedSequence",
    "Generation",
    "LogitsTransform",
    "ModelSession",
    "RegistryError",
    "Runtime",
    "RuntimeAdapterError",
    "RuntimeProcessors",
    "SamplingConfig",
    "StoppingRule",
    "TokenizerView",
    "TransformContext",
    "__version__",
    "config_field",
    "get_decoder",
    "get_registry",
    "hookimpl",
]
