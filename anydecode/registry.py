"""The plugin registry: one pluggy PluginManager for the project name ``anydecode``.

Built-in algorithms are ordinary plugins (the modules of ``anydecode.builtin``), registered first; third-party
plugins come from the entry-point group ``anydecode``. Every decoder, drafter, grammar engine and reward is
registered by name; a name registered twice is an error naming both sources.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import pkgutil
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pluggy

from . import hookspecs
from .hookspecs import PROJECT_NAME
from anydecode.algorithms.contracts.config import DecoderConfig
from anydecode.algorithms.contracts.decoder import Decoder
from anydecode.algorithms.contracts.errors import RegistryError, unknown_name

KINDS = ("decoder", "drafter", "grammar_engine", "reward")
_HOOKS = {
    "decoder": "anydecode_register_decoders",
    "drafter": "anydecode_register_drafters",
    "grammar_engine": "anydecode_register_grammar_engines",
    "reward": "anydecode_register_rewards",
}


@dataclasses.dataclass(frozen=True)
class ComponentSpec:
    """A registered drafter, grammar engine or reward: a name, a factory and its config type."""

    name: str
    factory: Callable[..., Any]
    config_cls: type[DecoderConfig] | None = None
    description: str = ""
    source: str = ""

    def configure(self, values: dict[str, Any] | None = None, *, from_strings: bool = False) -> DecoderConfig | None:
        if self.config_cls is None:
            if values:
                raise RegistryError(f"{self.name!r} takes no settings, got {sorted(values)}")
            return None
        return self.config_cls.from_mapping(values, from_strings=from_strings, name=self.name)


class Registry:
    """Everything registered through the anydecode hooks, by kind and name."""

    def __init__(self, *, load_entrypoints: bool | None = None):
        if load_entrypoints is None:  # tests block installed third-party plugins with this variable
            load_entrypoints = os.environ.get("ANYDECODE_DISABLE_PLUGINS") != "1"
        self.pm = pluggy.PluginManager(PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        for info in pkgutil.iter_modules(importlib.import_module("anydecode.builtin").__path__):
            module = importlib.import_module(f"anydecode.builtin.{info.name}")
            self.pm.register(module, name=f"anydecode.builtin.{info.name}")
        if load_entrypoints:
            self.pm.load_setuptools_entrypoints(PROJECT_NAME)
        self._items: dict[str, dict[str, Any]] = {}
        self._collect()

    # -- plugins -------------------------------------------------------------------------------------------------
    def _source(self, plugin: object) -> str:
        name = self.pm.get_name(plugin) or repr(plugin)
        for registered, dist in self.pm.list_plugin_distinfo():
            if registered is plugin:
                return f"{dist.project_name} {dist.version} ({name})"
        return name if name.startswith("anydecode.builtin") else f"plugin {name}"

    def _collect(self) -> None:
        items: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}
        for kind, hook_name in _HOOKS.items():
            hook = getattr(self.pm.hook, hook_name)
            for impl in reversed(hook.get_hookimpls()):  # registration order
                source = self._source(impl.plugin)

                def register(item: Any, _kind: str = kind, _source: str = source) -> None:
                    self._add(items[_kind], _kind, item, _source)

                impl.function(register=register)
        self._items = items

    @staticmethod
    def _add(table: dict[str, Any], kind: str, item: Any, source: str) -> None:
        name = getattr(item, "name", None)
        if not isinstance(name, str) or not name:
            raise RegistryError(f"{source} registered a {kind} without a name: {item!r}")
        if kind == "decoder" and not isinstance(item, Decoder):
            raise RegistryError(f"{source} registered decoder {name!r} as {type(item).__name__}, not a Decoder")
        if kind != "decoder" and not isinstance(item, ComponentSpec):
            raise RegistryError(f"{source} registered {kind} {name!r} as {type(item).__name__}, not a ComponentSpec")
        if name in table:
            raise RegistryError(
                f"{kind} {name!r} is registered twice: by {table[name].source} and by {source}"
            )
        table[name] = dataclasses.replace(item, source=source)

    def register_plugin(self, plugin: object, name: str | None = None) -> None:
        """Register a plugin object or module at run time (tests, notebooks) and re-collect."""
        self.pm.register(plugin, name=name)
        try:
            self._collect()
        except Exception:
            self.pm.unregister(plugin)
            self._collect()
            raise

    def unregister_plugin(self, plugin: object) -> None:
        self.pm.unregister(plugin)
        self._collect()

    @contextlib.contextmanager
    def plugin(self, plugin: object, name: str | None = None) -> Iterator[None]:
        """Register ``plugin`` for the duration of a ``with`` block."""
        self.register_plugin(plugin, name)
        try:
            yield
        finally:
            self.unregister_plugin(plugin)

    # -- lookups -------------------------------------------------------------------------------------------------
    def items(self, kind: str) -> dict[str, Any]:
        if kind not in self._items:
            raise RegistryError(f"unknown kind {kind!r}; kinds: {', '.join(KINDS)}")
        return dict(self._items[kind])

    def get(self, kind: str, name: str) -> Any:
        table = self.items(kind)
        if name not in table:
            raise unknown_name(kind.replace("_", " "), name, table)
        return table[name]

    def decoder(self, name: str) -> Decoder:
        return self.get("decoder", name)

    def decoders(self) -> dict[str, Decoder]:
        return self.items("decoder")


_registry: Registry | None = None
_lock = threading.Lock()


def get_registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _registry
    with _lock:
        if _registry is None:
            _registry = Registry()
        return _registry


def reset_registry(registry: Registry | None = None) -> None:
    """Replace (or drop, to rebuild on next use) the process-wide registry."""
    global _registry
    with _lock:
        _registry = registry


def get_decoder(name: str) -> Decoder:
    return get_registry().decoder(name)
