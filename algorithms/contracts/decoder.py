"""Decoder: a named, registered algorithm with a typed config and the code that runs it.

Two kinds:

* ``transform`` decoders provide a :class:`LogitsTransform` (sampling warpers, grammar masks, ASAp). They run in
  the shared autoregressive loop (``anydecode.algorithms.loop``) on a model session, and adapters also turn them
  into a runtime's native logits hook (a transformers ``LogitsProcessor``, a llama.cpp ``LogitsProcessorList``,
  a vLLM logits processor).
* ``loop`` decoders drive a model session themselves (speculative decoding, beam search, DeAL).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch

from .config import DecoderConfig
from .session import ModelSession
from .transform import LogitsTransform


@dataclasses.dataclass
class TransformContext:
    """What a transform may need to know about the model it runs against, without a runtime in hand."""

    vocab_size: int
    eos_token_ids: frozenset[int] = frozenset()
    #: an object with ``decode(ids) -> str`` and, for grammar engines, the vocabulary (adapters provide it)
    tokenizer: Any = None
    #: runtime name (``hf``, ``llamacpp``, ``vllm``, ``toy``)
    runtime: str = ""


@dataclasses.dataclass
class DecodeContext(TransformContext):
    """Everything a decoder's ``run`` gets: the session after prefill, prompts and limits."""

    session: ModelSession | None = None
    #: prompt token ids of each row
    prompts: Sequence[Sequence[int]] = ()
    #: logits after each row's prompt, shape ``(batch, vocab)``
    prompt_logits: torch.Tensor | None = None
    max_new_tokens: int = 64
    #: called as ``on_token(row, token_id)`` as tokens are committed (streaming)
    on_token: Callable[[int, int], None] | None = None
    #: runtime-specific objects a decoder may use (a draft model, a second context)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class DecodeResult:
    """What every decoder returns, whatever the runtime."""

    #: generated token ids (prompt excluded) of each returned sequence
    sequences: list[list[int]]
    #: for each sequence, the prompt row it continues
    prompt_rows: list[int]
    #: ``stop`` (EOS), ``length`` (max_new_tokens), ``dead_end`` (grammar), ``abort``
    finish_reasons: list[str]
    #: a score per sequence where the decoder has one (beam log-probabilities, rewards)
    scores: list[float] | None = None
    #: counters: tokens, forward passes, drafted/accepted, ...
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)


DecoderKind = Literal["transform", "loop"]


@dataclasses.dataclass(frozen=True)
class Decoder:
    """A registered decoding algorithm."""

    name: str
    config_cls: type[DecoderConfig]
    kind: DecoderKind
    description: str = ""
    #: transform decoders: build the per-model transform from a config
    make_transform: Callable[[Any, TransformContext], LogitsTransform] | None = None
    #: loop decoders (and transform decoders that want their own loop): run on a session
    run_fn: Callable[[Any, DecodeContext], DecodeResult] | None = None
    #: set by the registry: the plugin that registered it
    source: str = ""

    def configure(self, values: Mapping[str, Any] | None = None, *, from_strings: bool = False) -> DecoderConfig:
        """Build and validate this decoder's config (ConfigError on a bad key or value)."""
        return self.config_cls.from_mapping(values, from_strings=from_strings, name=self.name)

    def transform(self, config: DecoderConfig, context: TransformContext) -> LogitsTransform:
        if self.make_transform is None:
            from .errors import ConfigError

            raise ConfigError(
                f"decoder {self.name!r} is a {self.kind} decoder and cannot act as a logits processor; "
                "use the runtime's generate() entry point instead"
            )
        return self.make_transform(config, context)

    def run(self, config: DecoderConfig, context: DecodeContext) -> DecodeResult:
        if self.run_fn is not None:
            return self.run_fn(config, context)
        from ..loop import run_transform_decoder

        return run_transform_decoder(self, config, context)
