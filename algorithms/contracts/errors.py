"""Errors that carry what was wrong, the value given and what is accepted."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class AnydecodeError(Exception):
    """Base class of every error anydecode raises on purpose (user errors: no traceback in the CLI)."""


class ConfigError(AnydecodeError, ValueError):
    """A decoder, drafter, reward or grammar setting is unknown, ill-typed or out of range."""


class RegistryError(AnydecodeError, LookupError):
    """A name is not registered, or registered twice."""


class RuntimeAdapterError(AnydecodeError, RuntimeError):
    """A runtime cannot do what was asked (missing extra, unsupported model, bad model file)."""


class ContextFull(RuntimeAdapterError):
    """A session has no room for more tokens; decoding loops end the rows with ``finish_reason="length"``."""


#: what a request's failure may raise without taking the process with it: operator-supplied code (a reward, a
#: transform) that raises ``SystemExit`` or ``KeyboardInterrupt`` still fails only its own request
REQUEST_ERRORS: tuple[type[BaseException], ...] = (Exception, SystemExit, KeyboardInterrupt)


def closest(name: str, choices: Iterable[str]) -> str:
    """' (did you mean X?)' for the closest registered name, or ''."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> RegistryError:
    names = sorted(choices)
    return RegistryError(f"unknown {kind} {name!r}{closest(name, names)}; registered: {', '.join(names) or 'none'}")
