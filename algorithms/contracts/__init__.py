"""The small contracts every core and adapter shares: model session, logits transform, decoder, config, errors."""

from .config import DecoderConfig, SamplingConfig, config_field
from .decoder import DecodeContext, DecodeResult, Decoder, TransformContext
from .errors import AnydecodeError, ConfigError, RegistryError, RuntimeAdapterError
from .session import ModelSession
from .transform import LogitsTransform, TransformState

__all__ = [
    "AnydecodeError",
    "ConfigError",
    "DecodeContext",
    "DecodeResult",
    "Decoder",
    "DecoderConfig",
    "LogitsTransform",
    "ModelSession",
    "RegistryError",
    "RuntimeAdapterError",
    "SamplingConfig",
    "TransformContext",
    "TransformState",
    "config_field",
]
