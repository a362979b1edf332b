"""The ``toy`` runtime: a seeded toy model (``conformance.toy``) behind the runtime-adapter contract.

``anydecode run --runtime toy --model "vocab=8,seed=3" --prompt abc`` runs any decoder on it in milliseconds: token
``i`` writes the letter ``"a" + i``, the last token is end-of-sequence. It is how the conformance suite and the
tests reach the CLI's machinery without a real model, and a template for a third-party runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from anydecode.algorithms.contracts.decoder import DecodeContext
from anydecode.algorithms.contracts.errors import RuntimeAdapterError
from anydecode.algorithms.contracts.runtime import Runtime
from anydecode.algorithms.grammar.tokenizers import TokenVocabulary, toy_vocabulary

from .toy import ToyModel, ToySession


class ToyTokenizer:
    """Letters ``a``, ``b``, ... one per token; the last id is end-of-sequence."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self.eos_token_id = vocab_size - 1
        self.letters = [chr(ord("a") + i) for i in range(vocab_size - 1)]

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str) -> list[int]:
        bad = sorted({c for c in text if c not in self.letters})
        if bad:
            raise RuntimeAdapterError(f"the toy vocabulary writes only {''.join(self.letters)}; got {bad!r}")
        return [self.letters.index(c) for c in text]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return "".join(self.letters[t] if t < len(self.letters) else ("" if skip_special_tokens else "</s>")
                       for t in ids)

    def grammar_vocabulary(self) -> TokenVocabulary:
        return toy_vocabulary(self.letters + [None])


class ToyRuntime(Runtime):
    name = "toy"
    description = "a seeded toy model (--model 'vocab=V,seed=S'), letters a.. as tokens; milliseconds per call"

    def load(self, model: str | None = None, *, progress: Callable[[str], None] | None = None) -> ToyModel:
        options = {"vocab": 8, "seed": 0}
        for part in (model or "").split(","):
            if not part.strip():
                continue
            key, sep, value = part.partition("=")
            if not sep or key.strip() not in options or not value.strip().isdigit():
                raise RuntimeAdapterError(f"toy model {model!r}: give 'vocab=V,seed=S' (integers), got {part!r}")
            options[key.strip()] = int(value)
        if not 2 <= options["vocab"] <= 27:
            raise RuntimeAdapterError(f"toy model vocab={options['vocab']} must be 2..27")
        return ToyModel.seeded(options["vocab"], seed=options["seed"], eos_token_id=options["vocab"] - 1,
                               concentration=0.5)

    def tokenizer(self, handle: ToyModel) -> ToyTokenizer:
        return ToyTokenizer(handle.vocab_size)

    def encode(self, handle: ToyModel, prompt: str, *, chat: bool = False) -> list[int]:
        return self.tokenizer(handle).encode(prompt)

    def open(self, handle: ToyModel, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             on_token: Callable[[int, int], None] | None = None) -> DecodeContext:
        session = ToySession(handle, prompts)
        return DecodeContext(vocab_size=handle.vocab_size, eos_token_ids=session.eos_token_ids,
                             tokenizer=self.tokenizer(handle), runtime=self.name, session=session,
                             prompts=[list(p) for p in prompts], prompt_logits=session.prompt_logits(),
                             max_new_tokens=max_new_tokens, on_token=on_token, owner=handle)

    def baselines(self, handle: ToyModel) -> dict[str, Any]:
        def greedy(prompt: list[int], max_new_tokens: int, sampling: Any) -> tuple[list[int], dict[str, Any]]:
            out: list[int] = []
            for _ in range(max_new_tokens):
                token = int(handle.probs(prompt + out).argmax())
                out.append(token)
                if token == handle.eos_token_id:
                    break
            return out, {"prefill_seconds": 0.0}

        return {"native-greedy": greedy}
