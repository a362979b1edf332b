"""The runtime-adapter contract: what a runtime hands the cores, and how the CLI reaches a runtime.

A runtime adapter (transformers, llama.cpp, vLLM, a toy model, a third party's) is a :class:`Runtime` registered
through the ``anydecode_register_runtimes`` hook. The CLI's ``run``, ``bench`` and ``conformance`` reach every
runtime through it, so adding a runtime means writing one plugin, not editing the CLI or a core.

What a runtime gives a decoder travels in typed fields of :class:`~.decoder.DecodeContext`:

* a model session holding the prompts (``session``, ``prompt_logits``), a factory of multi-row sessions for search
  decoders (``open_rows``) and a draft model's session (``draft_session``);
* its tokenizer view (:class:`TokenizerView`), which also gives grammar engines the vocabulary's bytes;
* its own logits processors (:class:`RuntimeProcessors`: transformers' repetition penalty, bad words, min new
  tokens, ...) and stopping rules (:class:`StoppingRule`: stop strings, custom criteria), which every decoder
  applies;
* the owner that per-model state is keyed on (``owner``: ADED's tri-gram tables, suffix corpora).

A runtime may also offer optional native paths, which ``anydecode conformance`` checks where they are offered
(:meth:`Runtime.offers`): draws by the runtime's own sampler with a transform decoder installed through its native
logits hook (:meth:`Runtime.native_draws`), and greedy decoding through the runtime's own speculative decoding with
an anydecode drafter as its proposer (:meth:`Runtime.native_speculative_greedy`). A runtime that does not offer
them leaves the defaults, which raise NotImplementedError.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from .config import DecoderConfig
    from .decoder import DecodeContext, Decoder
    from .session import ModelSession


@runtime_checkable
class TokenizerView(Protocol):
    """A runtime's tokenizer as the cores see it."""

    eos_token_id: int | None

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added)."""

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """The text of ``ids``."""

    def grammar_vocabulary(self) -> Any:
        """The ``TokenVocabulary`` (bytes of every token id) grammar engines compile against."""


class RuntimeProcessors(abc.ABC):
    """The runtime's own logits processors, applied to a row's logits before a decoder chooses from them.

    Each call gets every row's whole history, as a runtime's processors expect (transformers' processors read the
    row's ids, left padding included), so the same rule serves samples, beams, draft positions and lookaheads.
    """

    @abc.abstractmethod
    def __call__(self, prompt_rows: Sequence[int], generated: Sequence[Sequence[int]],
                 logits: torch.Tensor) -> torch.Tensor:
        """Processed ``logits`` ``(rows, vocab)`` of rows continuing prompts ``prompt_rows`` after ``generated``."""


class StoppingRule(abc.ABC):
    """The runtime's stopping rules beyond end-of-sequence and the length limit (stop strings, custom criteria)."""

    @abc.abstractmethod
    def __call__(self, prompt_row: int, generated: Sequence[int]) -> bool:
        """Whether a row continuing prompt ``prompt_row`` stops after ``generated`` (its last token included)."""


#: ``open_rows(rows, extra_tokens) -> (session, logits after each prompt)``: a session holding each prompt once that
#: can grow to ``rows`` rows, each up to ``max_new_tokens + extra_tokens`` new tokens (search decoders)
RowsFactory = Callable[[int, int], "tuple[ModelSession, torch.Tensor]"]


@dataclasses.dataclass
class NativeSpeculation:
    """Greedy outputs of a runtime's own speculative decoding with an anydecode drafter as its proposer
    (:meth:`Runtime.native_speculative_greedy`), and the runtime's own counters for that call."""

    #: generated token ids of each prompt
    outputs: list[list[int]]
    #: draft tokens the runtime verified, and how many of them it accepted
    draft_tokens: int
    accepted_tokens: int
    #: what a report should say about this path (a limitation of the runtime, the draft length)
    note: str = ""


class Runtime(abc.ABC):
    """A registered runtime adapter (the CLI, ``anydecode bench`` and ``anydecode conformance`` use it).

    ``load`` gives a model handle (the runtime's own object: a ``Llama``, a ``(model, tokenizer)`` pair, an
    ``LLM``); the other methods take that handle.
    """

    #: the name users pick it by (``--runtime NAME``)
    name: str = ""
    description: str = ""
    #: most rows decoded side by side that still get the logits one row gets alone (conformance draws its samples
    #: in batches of at most this many: llama.cpp's CPU kernels change from 64 tokens a batch on AVX-512 CPUs)
    exact_rows: int = 64

    @abc.abstractmethod
    def load(self, model: str | None = None, *, progress: Callable[[str], None] | None = None) -> Any:
        """The model at ``model`` (None: the runtime's default model) ready to generate."""

    def load_for(self, model: str | None, decoders: Sequence[Decoder], *,
                 progress: Callable[[str], None] | None = None) -> Any:
        """``load``, for running ``decoders``: a runtime may pick settings that suit them (llama.cpp turns flash
        attention on only where a decoder verifies blocks of tokens). The CLI's ``run`` and ``bench`` load through
        this; the default is ``load``."""
        return self.load(model, progress=progress)

    def close(self, handle: Any) -> None:
        """Free what ``load`` allocated."""

    @abc.abstractmethod
    def tokenizer(self, handle: Any) -> TokenizerView:
        """The model's tokenizer view."""

    @abc.abstractmethod
    def encode(self, handle: Any, prompt: str, *, chat: bool = False) -> list[int]:
        """Token ids of a prompt, as the runtime would feed it (``chat``: in the model's chat template)."""

    @abc.abstractmethod
    def open(self, handle: Any, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             on_token: Callable[[int, int], None] | None = None) -> DecodeContext:
        """A decode context whose session holds ``prompts`` (prefilled), with every typed field this runtime has.

        ``stats["prefill_seconds"]`` of the result is the time of the prompts' forward pass
        (``DecodeContext.prefill_seconds``).
        """

    def reset(self, handle: Any) -> None:
        """Forget what the model holds from earlier prompts, so the next ``open`` prefills all of its prompt
        (benchmarks time every prefill alike)."""

    def owner(self, handle: Any) -> object:
        """What per-model state (ADED tables, suffix corpora) is keyed on."""
        return handle

    def baselines(self, handle: Any) -> Mapping[str, Callable[[list[int], int, Mapping[str, Any]],
                                                               tuple[list[int], dict[str, Any]]]]:
        """The runtime's own decoding loops for ``anydecode bench`` (``native-greedy``, ...):
        ``baseline(prompt_ids, max_new_tokens, sampling) -> (generated ids, stats with prefill_seconds)``."""
        return {}

    def next_token_logits(self, handle: Any, ids: Sequence[int]) -> torch.Tensor:
        """The model's next-token logits after ``ids`` (conformance targets), as the runtime computes them."""
        ctx = self.open(handle, [list(ids)], max_new_tokens=0)
        assert ctx.prompt_logits is not None
        return ctx.prompt_logits[0].float()

    def greedy_parting_gap(self, handle: Any) -> float:
        """The largest log-probability gap between the top two tokens at which a greedy-identical decoder may part
        from the runtime's own greedy decoding: 0 where a block forward (speculative verification) gives exactly the
        logits of one-token forwards, else twice their largest measured difference (an argmax can flip only at a
        near-tie that small). Conformance allows partings only at such gaps."""
        return 0.0

    def check(self, decoder: Decoder, config: DecoderConfig) -> None:
        """Refuse a decoder this runtime cannot run (RuntimeAdapterError naming the reason)."""

    # -- optional native paths (``anydecode conformance`` checks those a runtime offers) ------------------------------
    def offers(self, capability: str) -> bool:
        """Whether this runtime implements the optional method ``capability`` (``"native_draws"``,
        ``"native_speculative_greedy"``)."""
        return getattr(type(self), capability, None) is not getattr(Runtime, capability, None)

    def native_draws(self, handle: Any, decoder: str, settings: Mapping[str, Any], prompt_ids: Sequence[int],
                     n: int, max_new_tokens: int) -> list[tuple[int, ...]]:
        """Optional: ``n`` continuations of ``prompt_ids`` drawn by the runtime's own sampler, with the transform
        decoder ``decoder`` (``settings`` as a request sends them) installed through the runtime's native logits
        hook; each draw is its own seeded request, at most ``max_new_tokens`` tokens, the end-of-sequence token
        included where it ends one. The runtime's sampler adds no warping of its own (temperature 1, no top-k,
        top-p or min-p), so the draws follow the transform's law on the logits :meth:`next_token_logits` gives
        (all of the vocabulary). NotImplementedError: not offered (the default)."""
        raise NotImplementedError(f"runtime {self.name!r} offers no native draws")

    def native_speculative_greedy(self, handle: Any, drafter: str, settings: Mapping[str, Any],
                                  prompts: Sequence[Sequence[int]], max_new_tokens: int) -> NativeSpeculation:
        """Optional: greedy continuations of ``prompts`` through the runtime's own speculative decoding, with the
        registered drafter ``drafter`` (its ``settings``) as the runtime's proposer. NotImplementedError: not
        offered (the default), or not for this drafter (the message says why)."""
        raise NotImplementedError(f"runtime {self.name!r} offers no native speculative decoding")
