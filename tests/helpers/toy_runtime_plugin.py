"""A third party's runtime plugin, as a package outside anydecode would ship it (registered by the tests with
``get_registry().plugin(...)``): a toy model whose end-of-sequence id is 0, behind the runtime-adapter contract."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anydecode
from anydecode.algorithms.contracts.decoder import DecodeContext
from anydecode.algorithms.grammar.tokenizers import toy_vocabulary
from anydecode.conformance.toy import ToyModel, ToySession


class DigitsTokenizer:
    """Token 0 ends a sequence; tokens 1..5 write the digits 1..5."""

    eos_token_id = 0

    def encode(self, text: str) -> list[int]:
        return [int(c) for c in text if c in "12345"]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return "".join(str(t) for t in ids if t != 0 or not skip_special_tokens)

    def grammar_vocabulary(self) -> Any:
        return toy_vocabulary([None, "1", "2", "3", "4", "5"])


class DigitsRuntime(anydecode.Runtime):
    name = "digits"
    description = "a third party's toy runtime (tests)"

    def __init__(self) -> None:
        self.opened = 0

    def load(self, model=None, *, progress=None):
        return ToyModel.seeded(6, seed=int(model or 1), eos_token_id=0, concentration=0.6)

    def tokenizer(self, handle):
        return DigitsTokenizer()

    def encode(self, handle, prompt, *, chat=False):
        return DigitsTokenizer().encode(prompt) or [1]

    def open(self, handle, prompts, *, max_new_tokens, on_token=None):
        self.opened += 1
        session = ToySession(handle, prompts)
        return DecodeContext(vocab_size=6, eos_token_ids=frozenset({0}), tokenizer=DigitsTokenizer(),
                             runtime=self.name, session=session, prompts=[list(p) for p in prompts],
                             prompt_logits=session.prompt_logits(), max_new_tokens=max_new_tokens, on_token=on_token)

    def baselines(self, handle):
        def greedy(prompt, max_new_tokens, sampling):
            out = []
            while len(out) < max_new_tokens:
                out.append(int(handle.probs(list(prompt) + out).argmax()))
                if out[-1] == 0:
                    break
            return out, {"prefill_seconds": 0.0}

        return {"native-greedy": greedy}


RUNTIME = DigitsRuntime()


@anydecode.hookimpl
def anydecode_register_runtimes(register):
    register(RUNTIME)
