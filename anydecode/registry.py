"""The plugin registry: one pluggy PluginManager for the project name ``anydecode``.

Built-in algorithms and runtimes are ordinary plugins (the modules of ``anydecode.builtin``), registered first;
third-party plugins come from the entry-point group ``anydecode``. Every decoder, drafter, grammar engine, reward
and runtime is registered by name; a name registered twice is an error naming both sources. The registry is also
the component lookup that registered decoders' configs resolve drafter, grammar-engine and reward names through.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import pkgutil
import threading
from collections.abc import Iterator
from typing import Any

import pluggy

from . import hookspecs
from .hookspecs import PROJECT_NAME
from anydecode.algorithms.contracts.component import ComponentSpec
from anydecode.algorithms.contracts.decoder import Decoder
from anydecode.algorithms.contracts.errors import RegistryError, unknown_name
from anydecode.algorithms.contracts.runtime import Runtime
from anydecode.algorithms.loop import with_loop

KINDS = ("decoder", "drafter", "grammar_engine", "reward", "runtime")
_HOOKS = {
    "decoder": "anydecode_register_decoders",
    "drafter": "anydecode_register_drafters",
    "grammar_engine": "anydecode_register_grammar_engines",
    "reward": "anydecode_register_rewards",
    "runtime": "anydecode_register_runtimes",
}


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
                    self._add(items[_kind], _kind, item, _source, self)

                impl.function(register=register)
        self._items = items

    @staticmethod
    def _add(table: dict[str, Any], kind: str, item: Any, source: str, components: Registry) -> None:
        name = getattr(item, "name", None)
        if not isinstance(name, str) or not name:
            raise RegistryError(f"{source} registered a {kind} without a name: {item!r}")
        expected = {"decoder": Decoder, "runtime": Runtime}.get(kind, ComponentSpec)
        if not isinstance(item, expected):
            raise RegistryError(f"{source} registered {kind} {name!r} as {type(item).__name__}, "
                                f"not a {expected.__name__}")
        if name in table:
            raise RegistryError(
                f"{kind} {name!r} is registered twice: by {getattr(table[name], 'source', '?')} and by {source}"
            )
        if kind == "decoder":
            item = with_loop(dataclasses.replace(item, source=source, components=components))
        elif kind == "runtime":
            item.source = source  # runtimes are objects with state of their own (loaded models, caches)
        else:
            item = dataclasses.replace(item, source=source)
        table[name] = item

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

    def runtime(self, name: str) -> Runtime:
        return self.get("runtime", name)


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
