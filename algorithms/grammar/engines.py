"""Finding a grammar engine by name: through the components a config was built with, else among the built-ins."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ..contracts.errors import ConfigError, unknown_name
from .engine import GrammarEngine


def _llguidance() -> GrammarEngine:
    from .llguidance_engine import LLGuidanceEngine

    return LLGuidanceEngine()


def _outlines() -> GrammarEngine:
    from .outlines_engine import OutlinesEngine

    return OutlinesEngine()


#: the built-in engines: factory and description (the built-in plugin registers these)
BUILTIN_ENGINES: dict[str, tuple[Callable[[], GrammarEngine], str]] = {
    "llguidance": (_llguidance, "llguidance (Earley parser, masks on the fly): lark, gbnf, json_schema, regex; "
                                "the default"),
    "outlines": (_outlines, "outlines-core (token automaton, integer states): regex, json_schema"),
}

_engines: dict[tuple[str, Any], GrammarEngine] = {}
_engines_lock = threading.Lock()


def engine_spec(name: str, components: Any = None) -> Any:
    """The factory of the grammar engine ``name``: through ``components`` (the registry) or the built-ins."""
    if components is not None:
        return components.get("grammar_engine", name).factory
    if name not in BUILTIN_ENGINES:
        raise unknown_name("grammar engine", name, BUILTIN_ENGINES)
    return BUILTIN_ENGINES[name][0]


def get_engine(name: str, components: Any = None) -> GrammarEngine:
    """The process-wide instance of the grammar engine ``name`` (one per engine factory)."""
    factory = engine_spec(name, components)
    key = (name, factory)
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = factory()
            if not isinstance(engine, GrammarEngine):
                raise ConfigError(
                    f"grammar engine {name!r} factory returned {type(engine).__name__}, not a GrammarEngine")
            _engines[key] = engine
        return engine
