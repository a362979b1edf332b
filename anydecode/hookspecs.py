"""The extension points of anydecode: read these docstrings and you know how to write a plugin.

A plugin is a module (listed under the entry-point group ``anydecode`` in its distribution's metadata) that
implements some of these hooks with ``@anydecode.hookimpl``. Each hook receives a ``register`` callback; call it
once per thing you provide. anydecode's built-in algorithms and runtimes register through these same hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from anydecode.algorithms.contracts.component import ComponentSpec
    from anydecode.algorithms.contracts.decoder import Decoder
    from anydecode.algorithms.contracts.runtime import Runtime

PROJECT_NAME = "anydecode"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def anydecode_register_decoders(register: Callable[[Decoder], None]) -> None:
    """Register decoders: ``register(decoder)`` with an ``anydecode.Decoder``.

    A decoder has a unique ``name``, a ``kind`` (``transform``: provides a logits transform,
    ``make_transform(config, TransformContext) -> LogitsTransform``, and runs in the shared autoregressive loop;
    ``loop``: ``run_fn(config, DecodeContext) -> DecodeResult`` drives a model session itself), a config dataclass
    deriving from ``anydecode.DecoderConfig`` whose fields say whether a server's requests may set them
    (``config_field(..., request=True)``), and a ``claim`` (what ``anydecode conformance`` checks it against).
    """


@hookspec
def anydecode_register_drafters(register: Callable[[ComponentSpec], None]) -> None:
    """Register speculative drafters: ``register(ComponentSpec(name, factory, config_cls, description))``.

    ``factory(drafter_config, sampling_config, decode_context) -> Drafter`` builds a drafter for one ``generate``
    call; it proposes draft tokens (and their probabilities ``q``, or none for a deterministic drafter) for the
    speculative decoders to verify. Runtime objects come from the context's typed fields.
    """


@hookspec
def anydecode_register_grammar_engines(register: Callable[[ComponentSpec], None]) -> None:
    """Register grammar engines: ``register(ComponentSpec(name, factory))`` where ``factory() -> GrammarEngine``
    compiles a grammar for a vocabulary into matchers that give allowed-token masks, consume tokens, roll back and
    fork."""


@hookspec
def anydecode_register_rewards(register: Callable[[ComponentSpec], None]) -> None:
    """Register rewards for search decoders (DeAL, best-of-N): ``register(ComponentSpec(name, factory,
    config_cls))`` where ``factory(config) -> Reward`` (or a plain ``function(text) -> float``) scores a candidate
    text, higher is better."""


@hookspec
def anydecode_register_runtimes(register: Callable[[Runtime], None]) -> None:
    """Register runtime adapters: ``register(runtime)`` with an ``anydecode.Runtime`` instance.

    A runtime loads models, encodes prompts and opens decode contexts (sessions, processors, stopping rules); the
    CLI's ``run``, ``bench`` and ``conformance`` reach it by its ``name`` (``--runtime NAME``).
    """
