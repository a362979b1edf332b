"""Text in and out of a llama-cpp-python ``Llama``: tokenizing, chat templates, incremental detokenizing."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from typing import Any

from anydecode.algorithms.contracts.errors import RuntimeAdapterError


def token_bytes(llm: Any, token_id: int, special: bool = True, _buffer: list[Any] = []) -> bytes:  # noqa: B006
    """The bytes of one token, read through a 4 KiB buffer.

    llama-cpp-python 0.3.x's ``Llama.detokenize`` reads each piece through a 32-byte buffer and silently drops
    longer ones (SmolLM2 has 47 such tokens: runs of spaces or dashes), so pieces are read here directly.
    """
    import ctypes

    import llama_cpp

    if not _buffer:
        _buffer.append(ctypes.create_string_buffer(4096))
    buf = _buffer[0]
    n = llama_cpp.llama_token_to_piece(llm._model.vocab, int(token_id), buf, len(buf), 0, special)
    if n < 0:
        raise RuntimeAdapterError(f"token {token_id} is longer than {len(buf)} bytes")
    return bytes(buf.raw[:n])


def detokenize(llm: Any, ids: Sequence[int], special: bool = True) -> bytes:
    return b"".join(token_bytes(llm, t, special) for t in ids)


_vocabularies: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_vocab_lock = threading.Lock()


class LlamaTokenizer:
    """A tokenizer-like view of a ``Llama`` (``encode``/``decode``/``eos_token_id``) for cores and rewards."""

    def __init__(self, llm: Any):
        self.llm = llm
        self.eos_token_id = int(llm.token_eos())
        self.vocab_size = int(llm.n_vocab())

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        return [int(t) for t in self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return detokenize(self.llm, ids, special=not skip_special_tokens).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        return token_bytes(self.llm, token_id, special=True)

    def grammar_vocabulary(self) -> Any:
        """The bytes of every token id (built once per ``Llama``)."""
        from anydecode.algorithms.grammar.tokenizers import from_llama

        with _vocab_lock:
            vocab = _vocabularies.get(self.llm)
            if vocab is None:
                vocab = _vocabularies[self.llm] = from_llama(self.llm)
            return vocab


def chat_prompt(llm: Any, prompt: str, system: str | None = None) -> str:
    """``prompt`` as a user turn in the model's own chat template (from the GGUF metadata)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        raise RuntimeAdapterError("this GGUF model has no chat template (tokenizer.chat_template); drop --chat")
    eos = llm.detokenize([llm.token_eos()], special=True).decode("utf-8", errors="replace")
    bos = llm.detokenize([llm.token_bos()], special=True).decode("utf-8", errors="replace")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)(messages=messages).prompt


def prompt_ids(llm: Any, prompt: str | Sequence[int], chat: bool = False) -> list[int]:
    """Token ids of a prompt given as text (optionally in the chat template) or as ids."""
    if isinstance(prompt, str):
        text = chat_prompt(llm, prompt) if chat else prompt
        # special markers (<|im_start|>, ...) in the text are the model's own tokens, as in create_completion
        return [int(t) for t in llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)]
    if chat:
        raise RuntimeAdapterError("chat=True needs the prompt as text, not token ids")
    ids = [int(t) for t in prompt]
    vocab = int(llm.n_vocab())
    bad = [t for t in ids if not 0 <= t < vocab]
    if bad:
        raise RuntimeAdapterError(f"prompt token ids {bad[:5]} are outside the vocabulary (0..{vocab - 1})")
    return ids


class StreamDecoder:
    """Turns a stream of token ids into text pieces, holding back incomplete UTF-8 sequences."""

    def __init__(self, llm: Any):
        self.llm = llm
        self.pending = b""

    def push(self, token_id: int) -> str:
        self.pending += token_bytes(self.llm, token_id, special=False)
        try:
            text = self.pending.decode("utf-8")
        except UnicodeDecodeError as exc:
            if exc.start == 0 and len(self.pending) < 4 and exc.reason == "unexpected end of data":
                return ""
            text = self.pending.decode("utf-8", errors="replace")
        self.pending = b""
        return text
