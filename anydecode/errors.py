"""Public error types (defined with the core contracts, re-exported here)."""

from anydecode.algorithms.contracts.errors import (
    AnydecodeError,
    ConfigError,
    RegistryError,
    RuntimeAdapterError,
)

__all__ = ["AnydecodeError", "ConfigError", "RegistryError", "RuntimeAdapterError"]
