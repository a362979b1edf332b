"""The extension points of anydecode: read these docstrings and you know how to write a plugin.

A plugin is a module (listed under the entry-point group ``anydecode`` in its distribution's metadata) that
implements some of these hooks with ``@anydecode.hookimpl``. Each hook receives a ``register`` callback; call it
once per thing you provide. anydecode's built-in algorithms register through these same hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT_NAME = "anydecode"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def anydecode_register_decoders(register: Callable[[Any], None]) -> None:
    """Register decoders: ``register(decoder)`` with an ``anydecode.Decoder``.

    A decoder has a unique ``name``, a ``kind`` (``transform``: provides a logits transform and runs in the
    shared autoregressive loop; ``loop``: drives a model session itself), a config dataclass deriving from
    ``anydecode.DecoderConfig`` and the code (``make_transform`` and/or ``run_fn``).
    """


@hookspec
def anydecode_register_drafters(register: Callable[[Any], None]) -> None:
    """Register speculative drafters: ``register(spec)`` with an ``anydecode.registry.ComponentSpec``.

    The spec's factory builds a drafter that proposes draft tokens (and their probabilities, or none for a
    deterministic drafter) for the speculative decoders to verify.
    """


@hookspec
def anydecode_register_grammar_engines(register: Callable[[Any], None]) -> None:
    """Register grammar engines: ``register(spec)``; the factory compiles a grammar for a tokenizer into a
    matcher that gives allowed-token masks, consumes tokens, rolls back and forks."""


@hookspec
def anydecode_register_rewards(register: Callable[[Any], None]) -> None:
    """Register rewards for search decoders (DeAL, best-of-N): ``register(spec)``; the factory builds a
    callable scoring a candidate text (higher is better)."""
