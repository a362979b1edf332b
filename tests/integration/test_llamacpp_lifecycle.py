"""llama.cpp on the embedded model: every ``create_completion`` is a new request for a logits processor, and a full
context ends with ``finish_reason="length"`` and the tokens so far, whatever the decoder (issue 12 regressions)."""

from __future__ import annotations

import pytest

import anydecode
import anydecode.plugins.llamacpp as L
from anydecode import LogitsTransform
from anydecode.algorithms.loop import transform_decoder

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def llm():
    llm = L.load_default()
    yield llm
    llm.close()


class Recorder(LogitsTransform):
    def __init__(self):
        self.started: list[int] = []
        self.finished: list[str] = []

    def start(self, prompt_ids):
        self.started.append(len(prompt_ids))
        return None

    def apply(self, state, generated_ids, logits):
        return logits

    def finish(self, state, generated_ids, reason):
        self.finished.append(reason)


def test_a_multi_turn_chat_is_a_new_request_at_every_completion(llm):
    """The second turn's prompt extends the first prompt and its answer: it used to be taken for the same request."""
    made = Recorder()
    decoder = transform_decoder("recorder", anydecode.DecoderConfig, lambda c, x: made)
    procs = L.logits_processor_list(llm, decoder)
    first = "<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\n"
    out = llm.create_completion(first, max_tokens=6, temperature=0.0, logits_processor=procs)
    answer = out["choices"][0]["text"]
    second = first + answer + "<|im_end|>\n<|im_start|>user\nAgain.<|im_end|>\n<|im_start|>assistant\n"
    llm.create_completion(second, max_tokens=6, temperature=0.0, logits_processor=procs)
    procs[0].finish()
    assert len(made.started) == 2 and made.started[1] > made.started[0]
    assert len(made.finished) == 2


@pytest.mark.parametrize("decoder", ["greedy", "iad", "aded", "prompt_lookup", "sample"])
def test_a_full_context_ends_with_length_and_keeps_the_tokens(decoder):
    """A user's Llama(n_ctx=64): llama.cpp gives 256 cells but llama-cpp-python's token buffer holds 64. iad and
    aded used to crash at 150 new tokens with a raw numpy broadcast error; every decoder now stops at the buffer."""
    llm = L.load_default(n_ctx=64)
    try:
        prompt = "Repeat after me: " + "one two three four five six seven eight nine ten " * 2
        settings = {"seed": 1} if decoder == "sample" else {}
        out = L.generate(llm, prompt, decoder=decoder, max_new_tokens=150, **settings)
        held = len(out.prompt_token_ids[0]) + len(out.token_ids)
        assert out.finish_reason in ("length", "stop")
        assert held <= 64 and len(out.token_ids) > 0
        if out.finish_reason == "length":
            assert held >= 60  # it used the room there was
    finally:
        llm.close()


def test_a_prompt_and_output_beyond_n_ctx_end_with_length_instead_of_an_error(llm):
    small = L.load_default(n_ctx=256)
    try:
        prompt = "Count: " + " ".join(str(i) for i in range(60))
        out = L.generate(small, prompt, decoder="greedy", max_new_tokens=400)
        assert out.finish_reason in ("length", "stop") and out.token_ids
        assert len(out.prompt_token_ids[0]) + len(out.token_ids) <= 256
    finally:
        small.close()
