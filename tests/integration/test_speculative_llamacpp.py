"""The speculative decoders in llama.cpp on the embedded model: greedy speculation against llama.cpp's own greedy
(the share of identical outputs is reported: llama.cpp's batched and one-token logits differ in the last bits),
seeded sampling, and anydecode's drafters as ``Llama(draft_model=...)``."""

from __future__ import annotations

import json

import anydecode.plugins.llamacpp as L
import pytest
from anydecode.algorithms.contracts.decoder import DecodeContext
from anydecode.plugins.llamacpp.session import LlamaSession
from anydecode.plugins.llamacpp.text import prompt_ids

import anydecode
from anydecode.workloads import FOLDER

pytestmark = pytest.mark.integration

WORKLOADS = FOLDER
EDITING = [json.loads(line)["prompt"] for line in (WORKLOADS / "editing.jsonl").read_text().splitlines()[:4]]
MAX_NEW = 48


@pytest.fixture(scope="module")
def llm():
    llm = L.load_default(n_ctx=2048)
    yield llm
    llm.close()


def top_two_gap(llm, ids: list[int], a: int, b: int) -> float:
    """|logit(a) - logit(b)| after ``ids``, from one-token decoding (the plain greedy path)."""
    session = LlamaSession(llm)
    llm.reset()
    logits = session.start(ids[:1])
    for token in ids[1:]:
        logits = session.step([token])
    return abs(float(logits[0, a] - logits[0, b]))


def test_greedy_speculation_matches_llama_cpp_greedy(llm):
    """Token-for-token equality with the plain greedy loop on editing prompts, for each drafter; where the
    outputs part, the two tokens must nearly tie in the one-token logits (batched and one-token kernels round
    differently), which is checked at the first differing position."""
    shares = {}
    gaps = []
    for decoder in ("iad", "prompt_lookup", "aded"):
        same = 0
        for prompt in EDITING:
            reference = L.generate(llm, prompt, decoder="greedy", max_new_tokens=MAX_NEW, chat=True).token_ids
            ours = L.generate(llm, prompt, decoder=decoder, max_new_tokens=MAX_NEW, chat=True)
            same += ours.token_ids == reference
            # the first token comes from the same prompt logits: always equal
            assert ours.token_ids[:1] == reference[:1]
            assert len(ours.token_ids) <= MAX_NEW
            if ours.token_ids != reference:
                i = next(j for j, (x, y) in enumerate(zip(ours.token_ids, reference)) if x != y)
                ids = prompt_ids(llm, prompt, chat=True) + reference[:i]
                gaps.append(top_two_gap(llm, ids, reference[i], ours.token_ids[i]))
        shares[decoder] = same / len(EDITING)
    print("identical-output share:", shares, "logit gaps where outputs part:", gaps)
    assert min(shares.values()) >= 0.5, shares
    # measured: a block and one-token steps give identical logits at most positions and differ by up to ~0.5 at a
    # few (another kernel path in llama.cpp); outputs part only where the two tokens are that close
    assert all(gap < 0.6 for gap in gaps), gaps


def test_draft_model_speculation_with_a_second_llama(llm):
    """A second Llama on the same file as the draft model accepts (nearly) everything."""
    draft_llm = L.load_default(n_ctx=2048)
    try:
        ids = prompt_ids(llm, EDITING[0], chat=True)
        target, draft = LlamaSession(llm), LlamaSession(draft_llm)
        logits = target.start(ids)
        draft.start(ids)
        ctx = DecodeContext(vocab_size=target.vocab_size, eos_token_ids=target.eos_token_ids, runtime="llamacpp",
                            session=target, prompts=[ids], prompt_logits=logits, max_new_tokens=32,
                            extra={"draft_session": draft})
        dec = anydecode.get_decoder("speculative")
        result = dec.run(dec.configure({"drafter": "draft_model"}), ctx)
        assert result.stats["acceptance_rate"] > 0.8
        assert 1 <= len(result.sequences[0]) <= 32
    finally:
        draft_llm.close()


def test_sampling_is_seeded_and_bounded(llm):
    kwargs = {"decoder": "iad", "max_new_tokens": 32, "chat": True, "temperature": 0.8, "top_p": 0.95, "seed": 7}
    a = L.generate(llm, EDITING[1], **kwargs)
    b = L.generate(llm, EDITING[1], **kwargs)
    assert a.token_ids == b.token_ids and len(a.token_ids) <= 32
    assert a.stats["drafted"] >= a.stats["accepted"]


@pytest.mark.parametrize("name", ["IADDraftModel", "ADEDDraftModel", "PromptLookupDraftModel"])
def test_llama_draft_models_keep_greedy_output(name):
    """``Llama(draft_model=...)`` with each anydecode drafter gives the same greedy text as a plain Llama."""
    from anydecode.plugins.llamacpp import draft as draft_models
    from llama_cpp import Llama

    from anydecode.models import default_gguf_path

    path = str(default_gguf_path())
    prompt = ("<|im_start|>user\n" + EDITING[1] + "<|im_end|>\n<|im_start|>assistant\n")
    plain = Llama(model_path=path, n_ctx=2048, verbose=False)
    try:
        reference = plain(prompt, max_tokens=40, temperature=0.0)["choices"][0]["text"]
    finally:
        plain.close()
    drafter = getattr(draft_models, name)()
    spec = Llama(model_path=path, n_ctx=2048, verbose=False, draft_model=drafter)
    try:
        text = spec(prompt, max_tokens=40, temperature=0.0)["choices"][0]["text"]
        again = spec(prompt, max_tokens=40, temperature=0.0)["choices"][0]["text"]  # a second request
    finally:
        spec.close()
    assert text == reference and again == reference
    assert drafter.drafted > 0
