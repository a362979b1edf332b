"""The small contracts every core and adapter shares: model session, logits transform, decoder, config, runtime
adapter, components, results, errors and the serving trust boundary."""

from .component import ComponentSpec, Components
from .config import DecoderConfig, SamplingConfig, config_field
from .decoder import DecodeContext, DecodeResult, Decoder, TransformContext
from .errors import AnydecodeError, ConfigError, ContextFull, RegistryError, RuntimeAdapterError
from .generation import GeneratedSequence, Generation
from .runtime import NativeSpeculation, RowsFactory, Runtime, RuntimeProcessors, StoppingRule, TokenizerView
from .session import ModelSession
from .transform import LogitsTransform, TransformState

__all__ = [
    "AnydecodeError",
    "ComponentSpec",
    "Components",
    "ConfigError",
    "ContextFull",
    "DecodeContext",
    "DecodeResult",
    "Decoder",
    "DecoderConfig",
    "GeneratedSequence",
    "Generation",
    "LogitsTransform",
    "ModelSession",
    "NativeSpeculation",
    "RegistryError",
    "RowsFactory",
    "Runtime",
    "RuntimeAdapterError",
    "RuntimeProcessors",
    "SamplingConfig",
    "StoppingRule",
    "TokenizerView",
    "TransformContext",
    "TransformState",
    "config_field",
]
