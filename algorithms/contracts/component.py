"""Components: the drafters, grammar engines and rewards that decoders are configured with by name.

A :class:`ComponentSpec` is what a plugin registers (``anydecode_register_drafters``, ``..._grammar_engines``,
``..._rewards``). Cores never look components up in the plugin registry themselves: a config is built with a
:class:`Components` lookup handed in (the registry is one; ``None`` means the built-in components only), and the
config resolves the names it holds when it is built, so an unknown name fails there, naming what is registered.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from .errors import RegistryError

if TYPE_CHECKING:
    from .config import DecoderConfig

#: the component kinds a config may name
KINDS = ("drafter", "grammar_engine", "reward")


@dataclasses.dataclass(frozen=True)
class ComponentSpec:
    """A registered drafter, grammar engine or reward: a name, a factory and its config type."""

    name: str
    factory: Callable[..., Any]
    config_cls: type[DecoderConfig] | None = None
    description: str = ""
    source: str = ""
    #: drafters: whether the drafter drafts from ``DecodeContext.prediction`` (OpenAI's predicted outputs); a server
    #: whose drafter does not refuses requests that send a prediction, rather than ignoring it
    accepts_prediction: bool = False

    def configure(self, values: dict[str, Any] | None = None, *, from_strings: bool = False) -> DecoderConfig | None:
        if self.config_cls is None:
            if values:
                raise RegistryError(f"{self.name!r} takes no settings, got {sorted(values)}")
            return None
        return self.config_cls.from_mapping(values, from_strings=from_strings, name=self.name)


class Components(Protocol):
    """Looks a component up by kind and name (RegistryError naming the registered ones)."""

    def get(self, kind: str, name: str) -> Any:
        """The :class:`ComponentSpec` registered as ``name``."""
