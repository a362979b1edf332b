"""The transformers tokenizer as anydecode's cores see it (``TokenizerView``), shared with the vLLM adapter."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from typing import Any

from anydecode.algorithms.grammar.tokenizers import TokenVocabulary, from_transformers

_vocabularies: weakref.WeakKeyDictionary[Any, TokenVocabulary] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


class HFTokenizer:
    """A transformers tokenizer's view: text without special tokens added, and its vocabulary for grammars (built
    once per tokenizer object: about a second for 50k tokens)."""

    def __init__(self, tokenizer: Any, vocab_size: int | None = None):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        eos = getattr(tokenizer, "eos_token_id", None)
        self.eos_token_id = None if eos is None else int(eos)

    def __len__(self) -> int:
        return len(self.tokenizer)

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text, add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def grammar_vocabulary(self) -> TokenVocabulary:
        with _lock:
            vocab = _vocabularies.get(self.tokenizer)
            if vocab is None:
                vocab = _vocabularies[self.tokenizer] = from_transformers(self.tokenizer, self.vocab_size)
            return vocab


def tokenizer_view(tokenizer: Any, vocab_size: int | None = None) -> Any:
    """``tokenizer`` as a view (a view, a TokenVocabulary or None passes through)."""
    if tokenizer is None or hasattr(tokenizer, "grammar_vocabulary") or isinstance(tokenizer, TokenVocabulary):
        return tokenizer
    return HFTokenizer(tokenizer, vocab_size)


def load_tokenizer(name: str) -> Any:
    """The transformers tokenizer of a model folder or name (the vLLM adapter's processes load theirs here)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)
