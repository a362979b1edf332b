"""Tokenizer bridges: the byte string of every token id, for transformers tokenizers, llama.cpp models and toys.

Grammar engines need to know which bytes each token writes. A :class:`TokenVocabulary` holds them, one entry per
id of the model's logits (ids the tokenizer does not define write nothing), plus the end-of-sequence ids, the
special (control) ids that never match grammar text, and an ``encode`` function. The bridges are duck-typed: no
runtime is imported here.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..contracts.errors import ConfigError

Encode = Callable[[str], list[int]]


@dataclasses.dataclass(frozen=True, eq=False)
class TokenVocabulary:
    """The bytes each token id writes, with its end-of-sequence and special ids."""

    token_bytes: tuple[bytes, ...]
    eos_token_ids: frozenset[int]
    special_ids: frozenset[int] = frozenset()
    #: text -> token ids (engines use it to tokenize forced text); greedy longest match when None
    encode: Encode | None = None
    #: where it came from, for messages
    source: str = ""

    def __post_init__(self) -> None:
        bad = sorted(i for i in self.eos_token_ids | self.special_ids if not 0 <= i < len(self.token_bytes))
        if bad:
            raise ConfigError(f"token ids {bad} are outside the vocabulary of {len(self.token_bytes)} tokens")
        if not self.eos_token_ids:
            raise ConfigError(f"the vocabulary ({self.source or 'unnamed'}) has no end-of-sequence token")

    @property
    def vocab_size(self) -> int:
        return len(self.token_bytes)

    @functools.cached_property
    def fingerprint(self) -> str:
        """A digest of every token's bytes, the EOS ids and the special ids (cache and ASAp-state key)."""
        h = hashlib.sha256()
        for piece in self.token_bytes:
            h.update(len(piece).to_bytes(4, "little"))
            h.update(piece)
        h.update(repr((sorted(self.eos_token_ids), sorted(self.special_ids))).encode())
        return h.hexdigest()[:32]

    def text_ids(self) -> list[int]:
        """Ids that write grammar text: not EOS, not special, not empty."""
        skip = self.eos_token_ids | self.special_ids
        return [i for i, b in enumerate(self.token_bytes) if b and i not in skip]

    def with_eos(self, eos_token_ids: Iterable[int]) -> TokenVocabulary:
        """The same vocabulary with more end-of-sequence ids (a chat model's end-of-turn token, say)."""
        extra = frozenset(int(i) for i in eos_token_ids)
        if extra <= self.eos_token_ids:
            return self
        return dataclasses.replace(self, eos_token_ids=self.eos_token_ids | extra,
                                   special_ids=self.special_ids | extra)

    def greedy_encode(self, text: str) -> list[int]:
        """Longest-match tokenization over the text tokens (the fallback ``encode``)."""
        table = _longest_match_table(self)
        data = text.encode("utf-8")
        out: list[int] = []
        pos = 0
        longest = max((len(k) for k in table), default=1)
        while pos < len(data):
            for size in range(min(longest, len(data) - pos), 0, -1):
                tok = table.get(data[pos:pos + size])
                if tok is not None:
                    out.append(tok)
                    pos += size
                    break
            else:
                raise ConfigError(f"text {text!r} cannot be written with the vocabulary ({self.source}): "
                                  f"no token starts with byte {data[pos:pos + 1]!r}")
        return out

    def tokenize(self, text: str) -> list[int]:
        return self.encode(text) if self.encode is not None else self.greedy_encode(text)


@functools.lru_cache(maxsize=8)
def _longest_match_table(vocab: TokenVocabulary) -> dict[bytes, int]:
    table: dict[bytes, int] = {}
    for i in vocab.text_ids():
        table.setdefault(vocab.token_bytes[i], i)
    return table


# -- toy vocabularies ----------------------------------------------------------------------------------------------

def toy_vocabulary(pieces: Sequence[str | bytes | None], eos_token_id: int | None = None) -> TokenVocabulary:
    """A vocabulary from explicit pieces; ``None`` marks a special token. EOS defaults to the last ``None``."""
    token_bytes = tuple(b"" if p is None else (p.encode("utf-8") if isinstance(p, str) else bytes(p)) for p in pieces)
    specials = frozenset(i for i, p in enumerate(pieces) if p is None)
    if eos_token_id is None:
        if not specials:
            raise ConfigError("a toy vocabulary needs an end-of-sequence token: add None to pieces or pass "
                              "eos_token_id")
        eos_token_id = max(specials)
    return TokenVocabulary(token_bytes, frozenset({eos_token_id}), specials | {eos_token_id}, source="toy")


def byte_vocabulary() -> TokenVocabulary:
    """The 256 single bytes plus an EOS token (id 256)."""
    return toy_vocabulary([bytes([b]) for b in range(256)] + [None])


# -- transformers --------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's byte-to-unicode table (byte-level BPE writes each byte as one printable character)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def _is_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    if decoder is not None and "ByteLevel" in repr(decoder):
        return True
    return bool(getattr(tokenizer, "byte_encoder", None))


def _sentencepiece_bytes(piece: str) -> bytes:
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            return bytes([int(piece[3:5], 16)])
        except ValueError:
            pass
    return piece.replace("\u2581", " ").encode("utf-8")


def from_transformers(tokenizer: Any, vocab_size: int | None = None) -> TokenVocabulary:
    """Bridge for a transformers tokenizer (duck-typed: ``convert_ids_to_tokens``, ``all_special_ids``, ...)."""
    size = len(tokenizer)
    vocab_size = max(size, vocab_size or 0)
    pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
    specials = set(getattr(tokenizer, "all_special_ids", []) or [])
    for tid, added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(added, "special", False):
            specials.add(int(tid))
    byte_level = _is_byte_level(tokenizer)
    table = _byte_decoder() if byte_level else {}
    out: list[bytes] = []
    for tid, piece in enumerate(pieces):
        if piece is None:
            out.append(b"")
        elif tid in specials:
            out.append(b"\xff" + piece.encode("utf-8"))  # never matches text: engines see a control token
        elif byte_level and all(ch in table for ch in piece):
            out.append(bytes(table[ch] for ch in piece))
        elif byte_level:
            out.append(tokenizer.decode([tid]).encode("utf-8"))
        else:
            out.append(_sentencepiece_bytes(piece))
    out.extend(b"" for _ in range(vocab_size - size))
    eos = getattr(tokenizer, "eos_token_id", None)
    eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
    if not eos_ids:
        raise ConfigError(f"the tokenizer {type(tokenizer).__name__} has no eos_token_id; grammar decoding needs one")
    specials |= eos_ids

    def encode(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False))

    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    return TokenVocabulary(tuple(out), frozenset(eos_ids), frozenset(specials), encode, f"transformers {name}")


# -- llama.cpp -----------------------------------------------------------------------------------------------------

#: llama.cpp token attributes (llama_token_attr): control and user-defined tokens
_ATTR_CONTROL = 1 << 3
_ATTR_USER_DEFINED = 1 << 4


def _llama_piece_reader(llm: Any) -> Callable[[int], bytes]:
    """Bytes of one token with special text, without ``Llama.detokenize``'s 32-byte limit.

    llama-cpp-python 0.3.x detokenizes through a 32-byte buffer and silently drops longer pieces (long runs of
    spaces or dashes); when the low-level binding is loaded (it is, if ``llm`` is a Llama), read each piece
    through a large buffer instead. Nothing is imported here: the module is taken from ``sys.modules``.
    """
    import ctypes
    import sys

    binding = sys.modules.get("llama_cpp")
    vocab = getattr(getattr(llm, "_model", None), "vocab", None)
    if binding is None or vocab is None or not hasattr(binding, "llama_token_to_piece"):
        return lambda tid: bytes(llm.detokenize([tid], special=True))
    size = 4096
    buffer = ctypes.create_string_buffer(size)

    def read(tid: int) -> bytes:
        n = binding.llama_token_to_piece(vocab, tid, buffer, size, 0, True)
        if n < 0:
            raise ConfigError(f"token {tid} of the llama.cpp vocabulary is longer than {size} bytes")
        return bytes(buffer.raw[:n])

    return read


def from_llama(llm: Any, vocab_size: int | None = None) -> TokenVocabulary:
    """Bridge for a llama-cpp-python ``Llama`` (duck-typed: ``n_vocab``, ``detokenize``, ``token_eos``)."""
    n = int(llm.n_vocab())
    vocab_size = max(n, vocab_size or 0)
    model = getattr(llm, "_model", None)
    get_attr = getattr(model, "token_get_attr", None)
    read = _llama_piece_reader(llm)
    out: list[bytes] = []
    specials: set[int] = set()
    for tid in range(n):
        piece = read(tid)
        attr = int(get_attr(tid)) if get_attr is not None else 0
        control = bool(attr & _ATTR_CONTROL) or (
            bool(attr & _ATTR_USER_DEFINED) and piece.startswith(b"<") and piece.endswith(b">"))
        if get_attr is None and piece and not llm.detokenize([tid], special=False):
            control = True  # no attributes: a token that writes nothing without special=True is a control token
        if control:
            specials.add(tid)
            piece = b"\xff" + piece
        out.append(piece)
    out.extend(b"" for _ in range(vocab_size - n))
    eos_ids = {int(llm.token_eos())}
    specials |= eos_ids

    def encode(text: str) -> list[int]:
        return list(llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    name = getattr(llm, "model_path", "") or type(llm).__name__
    return TokenVocabulary(tuple(out), frozenset(eos_ids), frozenset(specials), encode, f"llama.cpp {name}")


# -- dispatch ------------------------------------------------------------------------------------------------------

_cache: weakref.WeakKeyDictionary[Any, TokenVocabulary] = weakref.WeakKeyDictionary()


def vocabulary_for(tokenizer: Any, vocab_size: int | None = None,
                   eos_token_ids: Iterable[int] = ()) -> TokenVocabulary:
    """The TokenVocabulary of a runtime's tokenizer view (cached per object), with ``eos_token_ids`` added.

    Accepted: a TokenVocabulary, or a tokenizer view with ``grammar_vocabulary()`` (each runtime adapter gives one:
    the bridges :func:`from_transformers` and :func:`from_llama` build theirs). Nothing here knows a runtime.
    """
    if tokenizer is None:
        raise ConfigError("grammar decoding needs the tokenizer: the runtime adapter did not provide one "
                          "(transformers custom_generate: pass anydecode_tokenizer=tokenizer)")
    if isinstance(tokenizer, TokenVocabulary):
        vocab = tokenizer
    else:
        vocab = _cached(tokenizer)
    if vocab_size is not None and vocab.vocab_size < vocab_size:
        vocab = dataclasses.replace(vocab, token_bytes=vocab.token_bytes + (b"",) * (vocab_size - vocab.vocab_size))
    if vocab_size is not None and vocab.vocab_size > vocab_size:
        raise ConfigError(f"the tokenizer has {vocab.vocab_size} tokens but the model's logits have {vocab_size}")
    return vocab.with_eos(eos_token_ids)


def _cached(tokenizer: Any) -> TokenVocabulary:
    build = getattr(tokenizer, "grammar_vocabulary", None)
    if build is None:
        raise ConfigError(
            f"cannot read the vocabulary of a {type(tokenizer).__name__}: grammar decoding needs the runtime "
            "adapter's tokenizer view (an object with grammar_vocabulary()) or an anydecode TokenVocabulary")
    try:
        hit = _cache.get(tokenizer)
    except TypeError:  # not weak-referenceable: build every time
        hit = None
    if hit is None:
        hit = build()
        if not isinstance(hit, TokenVocabulary):
            raise ConfigError(f"{type(tokenizer).__name__}.grammar_vocabulary() returned {type(hit).__name__}")
        try:
            _cache[tokenizer] = hit
        except TypeError:
            pass
    return hit
