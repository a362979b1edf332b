"""The grammar-engine contract: compile a grammar for a vocabulary, then match token by token.

* A :class:`GrammarEngine` (one per engine name, registered through ``anydecode_register_grammar_engines``)
  compiles a :class:`GrammarSpec` for a :class:`TokenVocabulary`. Compiled grammars are cached per
  (grammar, vocabulary): the expensive work is shared by every request.
* A :class:`CompiledGrammar` hands out cheap :class:`GrammarMatcher` cursors, one per sequence.
* A matcher gives the allowed-token mask of its state (a bool array over the vocabulary, or the same packed into
  int32 words, the layout the kernels' batched masking reads), consumes a token, rolls back, forks, and says whether
  the text so far is complete. End of sequence is handled here, the same way for every
  engine: an EOS id is allowed exactly when the text so far is a sentence of the grammar.
"""

from __future__ import annotations

import abc
import collections
import threading

import numpy as np
import torch

from ..contracts.errors import ConfigError
from .spec import GrammarError, GrammarSpec
from .tokenizers import TokenVocabulary


def unpack_bitmask(words: np.ndarray, vocab_size: int) -> np.ndarray:
    """A bool array of ``vocab_size`` from 32-bit words, bit ``i % 32`` of word ``i // 32`` for token ``i``."""
    bits = np.unpackbits(words.view(np.uint8), bitorder="little")
    return bits[:vocab_size].view(np.bool_)


def bitmask_words(vocab_size: int) -> int:
    """int32 words of a packed mask over ``vocab_size`` tokens."""
    return (vocab_size + 31) // 32


def pack_bitmask(mask: np.ndarray) -> np.ndarray:
    """int32 words of a bool array: bit ``i % 32`` of word ``i // 32`` for token ``i`` (bits past the end clear).

    The layout llguidance, xgrammar and outlines-core fill, and ``anydecode.kernels.apply_token_masks`` reads.
    """
    return pad_words(np.packbits(mask, bitorder="little"), len(mask))


def pad_words(packed: np.ndarray, vocab_size: int) -> np.ndarray:
    """``np.packbits(..., bitorder="little")`` bytes of ``vocab_size`` bits as int32 words (little-endian bytes are
    token order)."""
    words = np.zeros(bitmask_words(vocab_size) * 4, dtype=np.uint8)
    words[: packed.shape[0]] = packed
    return words.view("<i4").astype(np.int32, copy=False)


class GrammarMatcher(abc.ABC):
    """A cursor in a compiled grammar: the state after the tokens consumed so far.

    Subclasses implement the engine side (``_engine_mask``, ``_engine_consume``, ``_engine_rollback``,
    ``_engine_fork``, ``is_complete``); this class adds the end-of-sequence rule and the token history.
    """

    def __init__(self, compiled: CompiledGrammar):
        self.compiled = compiled
        self.vocab_size = compiled.vocabulary.vocab_size
        self.history: list[int] = []
        self.finished = False

    # -- engine side -----------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def _engine_mask(self) -> np.ndarray:
        """Bool array (vocab_size,) of the text tokens the grammar allows next (EOS bits are ignored)."""

    def _engine_bitmask(self) -> np.ndarray:
        """``_engine_mask`` packed into int32 words (``pack_bitmask``); engines that fill words natively override it.
        The caller may modify the array."""
        return pack_bitmask(self._engine_mask())

    @abc.abstractmethod
    def _engine_consume(self, token: int) -> bool:
        """Advance by a text token; False (state unchanged) when the grammar forbids it."""

    @abc.abstractmethod
    def _engine_rollback(self, n: int) -> None:
        """Undo the last ``n`` text tokens."""

    @abc.abstractmethod
    def _engine_fork(self) -> GrammarMatcher:
        """An independent matcher in the same engine state (history is copied by ``fork``)."""

    @abc.abstractmethod
    def is_complete(self) -> bool:
        """Whether the text so far is a sentence of the grammar (so EOS is allowed)."""

    # -- public ----------------------------------------------------------------------------------------------------
    def allowed_array(self) -> np.ndarray:
        """Bool numpy array (vocab_size,): the tokens allowed next."""
        if self.finished:
            return np.zeros(self.vocab_size, dtype=np.bool_)
        mask = np.array(self._engine_mask(), dtype=np.bool_, copy=True)
        eos = self.compiled.eos_index
        mask[self.compiled.special_index] = False
        if self.is_complete():
            mask[eos] = True
        return mask

    def allowed_bitmask(self) -> np.ndarray:
        """:meth:`allowed_array` packed into int32 words, ``(ceil(vocab_size / 32),)``: bit ``i % 32`` of word
        ``i // 32`` allows token ``i`` (engines that fill words natively never unpack them)."""
        compiled = self.compiled
        if self.finished:
            return np.zeros(bitmask_words(self.vocab_size), dtype=np.int32)
        words = self._engine_bitmask()
        words &= compiled.text_words
        if self.is_complete():
            words |= compiled.eos_words
        return words

    def allowed_tokens(self) -> torch.Tensor:
        """Bool tensor (vocab_size,): the tokens allowed next."""
        return torch.from_numpy(self.allowed_array())

    def consume(self, token: int) -> bool:
        """Advance by ``token``; False, leaving the state unchanged, when it is not allowed."""
        token = int(token)
        if self.finished or not 0 <= token < self.vocab_size:
            return False
        if token in self.compiled.vocabulary.eos_token_ids:
            if not self.is_complete():
                return False
            self.finished = True
        elif token in self.compiled.vocabulary.special_ids or not self._engine_consume(token):
            return False
        self.history.append(token)
        return True

    def rollback(self, n: int) -> None:
        """Undo the last ``n`` consumed tokens."""
        if n < 0 or n > len(self.history):
            raise ConfigError(f"cannot roll back {n} tokens: the matcher holds {len(self.history)}")
        text_tokens = 0
        for _ in range(n):
            token = self.history.pop()
            if token in self.compiled.vocabulary.eos_token_ids:
                self.finished = False
            else:
                text_tokens += 1
        if text_tokens:
            self._engine_rollback(text_tokens)

    def fork(self) -> GrammarMatcher:
        """An independent matcher in the same state."""
        twin = self._engine_fork()
        twin.history = list(self.history)
        twin.finished = self.finished
        return twin

    def is_dead_end(self) -> bool:
        """No token is allowed and the text is not complete."""
        return not self.finished and not self.is_complete() and not bool(self._engine_mask()[
            self.compiled.text_index].any())


class CompiledGrammar(abc.ABC):
    """A grammar compiled for one vocabulary by one engine; shared by every matcher."""

    def __init__(self, spec: GrammarSpec, vocabulary: TokenVocabulary, engine: str):
        self.spec = spec
        self.vocabulary = vocabulary
        self.engine = engine
        self.eos_index = np.array(sorted(vocabulary.eos_token_ids), dtype=np.int64)
        self.special_index = np.array(sorted(vocabulary.special_ids | vocabulary.eos_token_ids), dtype=np.int64)
        self.text_index = np.array(vocabulary.text_ids(), dtype=np.int64)
        # the same rules on packed masks: special and EOS bits cleared, EOS bits set when the text is complete
        keep = np.ones(vocabulary.vocab_size, dtype=np.bool_)
        keep[self.special_index] = False
        self.text_words = pack_bitmask(keep)
        eos = np.zeros(vocabulary.vocab_size, dtype=np.bool_)
        eos[self.eos_index] = True
        self.eos_words = pack_bitmask(eos)

    @abc.abstractmethod
    def matcher(self) -> GrammarMatcher:
        """A new matcher at the start of the grammar."""

    def check_not_empty(self) -> None:
        """GrammarError when no token can start a sentence and the empty text is not one either."""
        m = self.matcher()
        if m.is_dead_end():
            raise GrammarError(
                f"the {self.spec.format} grammar has an empty language for this vocabulary "
                f"({self.vocabulary.source or 'unnamed'}): no token can begin a sentence of it"
            )


class GrammarEngine(abc.ABC):
    """Compiles grammars for vocabularies; results are cached per (grammar, vocabulary)."""

    name: str = ""
    formats: frozenset[str] = frozenset()
    cache_size = 64

    def __init__(self) -> None:
        self._compiled: collections.OrderedDict[tuple[str, str], CompiledGrammar] = collections.OrderedDict()
        self._lock = threading.Lock()

    def compile(self, spec: GrammarSpec, vocabulary: TokenVocabulary, *,
                max_states: int | None = None) -> CompiledGrammar:
        """The compiled grammar (from the cache when this grammar met this vocabulary before).

        ``max_states`` caps the automaton or lexer states the grammar may compile to (a server's limit on what a
        request's grammar may cost); a grammar past it is a GrammarError.
        """
        if spec.format not in self.formats:
            raise GrammarError(
                f"grammar engine {self.name!r} does not support the {spec.format} format; it supports "
                f"{', '.join(sorted(self.formats))} (the llguidance engine supports all of lark, gbnf, "
                "json_schema and regex)"
            )
        key = (spec.key, vocabulary.fingerprint, max_states)
        with self._lock:
            hit = self._compiled.get(key)
            if hit is not None:
                self._compiled.move_to_end(key)
                return hit
        compiled = self._compile(spec, vocabulary, max_states)
        compiled.check_not_empty()
        with self._lock:
            self._compiled[key] = compiled
            while len(self._compiled) > self.cache_size:
                self._compiled.popitem(last=False)
        return compiled

    @abc.abstractmethod
    def _compile(self, spec: GrammarSpec, vocabulary: TokenVocabulary, max_states: int | None) -> CompiledGrammar:
        """Compile without the cache; raise GrammarError for a grammar that does not parse, is unsupported, or
        needs more than ``max_states`` states (None: the engine's own limits)."""


def states_error(spec: GrammarSpec, states: int, limit: int) -> GrammarError:
    return GrammarError(f"the {spec.format} grammar compiles to {states} states, over the limit of {limit} "
                        "(grammar_states)")
