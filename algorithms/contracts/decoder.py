"""Decoder: a named, registered algorithm with a typed config and the code that runs it.

Two kinds:

* ``transform`` decoders provide a :class:`LogitsTransform` (sampling warpers, grammar masks, ASAp). They run in
  the shared autoregressive loop (``anydecode.algorithms.loop``; ``loop.transform_decoder`` builds one), and
  adapters also turn them into a runtime's native logits hook (a transformers ``LogitsProcessor``, a llama.cpp
  ``LogitsProcessorList``, a vLLM logits processor) through the shared request lifecycle
  (``anydecode.algorithms.lifecycle``).
* ``loop`` decoders drive a model session themselves (speculative decoding, beam search, DeAL).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch

from .config import DecoderConfig
from .errors import ConfigError
from .runtime import RowsFactory, RuntimeProcessors, StoppingRule, TokenizerView
from .session import ModelSession
from .transform import LogitsTransform


@dataclasses.dataclass(slots=True)
class TransformContext:
    """What a transform may need to know about the model it runs against, without a runtime in hand."""

    vocab_size: int
    eos_token_ids: frozenset[int] = frozenset()
    #: the runtime's tokenizer view (text in and out, and the vocabulary grammar engines compile against)
    tokenizer: TokenizerView | Any = None
    #: runtime name (``hf``, ``llamacpp``, ``vllm``, ``toy``, a plugin's)
    runtime: str = ""
    #: the most states a grammar may compile to (a server's limit on a request's grammar; None: the engine's own)
    max_grammar_states: int | None = None


@dataclasses.dataclass(slots=True)
class DecodeContext(TransformContext):
    """Everything a decoder's ``run`` gets from the runtime adapter: sessions after prefill, prompts, limits, and
    the runtime's own processors and stopping rules (every decoder applies them)."""

    session: ModelSession | None = None
    #: prompt token ids of each row
    prompts: Sequence[Sequence[int]] = ()
    #: logits after each row's prompt, shape ``(batch, vocab)``
    prompt_logits: torch.Tensor | None = None
    max_new_tokens: int = 64
    #: called as ``on_token(row, token_id)`` as tokens are committed (streaming)
    on_token: Callable[[int, int], None] | None = None
    #: the runtime's own logits processors (repetition penalty, bad words, min new tokens, ...)
    processors: RuntimeProcessors | None = None
    #: the runtime's stopping rules beyond EOS and the length limit (stop strings, custom criteria)
    stopping: StoppingRule | None = None
    #: what finished rows are padded with (transformers' pad token); None: the smallest end-of-sequence id
    pad_token_id: int | None = None
    #: what per-model state (ADED's tri-gram tables, suffix corpora) is keyed on; None: nothing is kept
    owner: object | None = None
    #: the draft model's session, holding the same prompts (``drafter="draft_model"``)
    draft_session: ModelSession | None = None
    #: multi-row sessions for search decoders where ``session`` cannot select rows (llama.cpp)
    open_rows: RowsFactory | None = None
    #: seconds the prompts' forward pass took (benchmarks report decoding speed without it)
    prefill_seconds: float = 0.0
    #: predicted outputs (OpenAI's ``prediction``): per prompt row, token ids the caller expects the output to
    #: largely repeat (the file being edited); speculative drafters that can use it draft from it
    prediction: Sequence[Sequence[int]] | None = None

    @property
    def pad(self) -> int:
        if self.pad_token_id is not None:
            return int(self.pad_token_id)
        return min(self.eos_token_ids) if self.eos_token_ids else 0


@dataclasses.dataclass
class DecodeResult:
    """What every decoder returns, whatever the runtime."""

    #: generated token ids (prompt excluded) of each returned sequence
    sequences: list[list[int]]
    #: for each sequence, the prompt row it continues
    prompt_rows: list[int]
    #: ``stop`` (EOS or a stopping rule), ``length`` (max_new_tokens or a full context), ``dead_end`` (grammar),
    #: ``abort``
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
    #: run the decoder on a decode context (``loop.transform_decoder`` fills it for transform decoders)
    run_fn: Callable[[Any, DecodeContext], DecodeResult] | None = None
    #: what the decoder's output is claimed to equal (conformance checks it); None: see ``claim_note``
    claim: str | None = None
    #: why a decoder claims nothing, or what its claim is measured against
    claim_note: str = ""
    #: whether the decoder drafts from ``DecodeContext.prediction`` (OpenAI's predicted outputs); any other decoder
    #: given a prediction is refused rather than ignoring it
    accepts_prediction: bool = False
    #: set by the registry: the plugin that registered it
    source: str = ""
    #: set by the registry: the components (drafters, grammar engines, rewards) its configs resolve names through
    components: Any = dataclasses.field(default=None, compare=False, repr=False)

    def configure(self, values: Mapping[str, Any] | None = None, *, from_strings: bool = False) -> DecoderConfig:
        """Build and validate this decoder's config (ConfigError on a bad key or value)."""
        return self.config_cls.from_mapping(values, from_strings=from_strings, name=self.name,
                                            components=self.components)

    def transform(self, config: DecoderConfig, context: TransformContext) -> LogitsTransform:
        if self.make_transform is None:
            raise ConfigError(
                f"decoder {self.name!r} is a {self.kind} decoder and cannot act as a logits processor; "
                "use the runtime's generate() entry point instead"
            )
        return self.make_transform(config, context)

    def run(self, config: DecoderConfig, context: DecodeContext) -> DecodeResult:
        if self.run_fn is None:
            raise ConfigError(f"decoder {self.name!r} has no run function: build transform decoders with "
                              "anydecode.algorithms.loop.transform_decoder")
        return self.run_fn(config, context)
