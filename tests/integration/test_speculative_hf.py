"""The speculative decoders in transformers on the embedded model: greedy speculation equals transformers' own
greedy decoding token for token (batch 1 and a left-padded batch), sampling is seeded and follows the target."""

from __future__ import annotations

import json

import anydecode.plugins.hf as H
import pytest
import torch
from anydecode.conformance import chi_square_test
from anydecode.plugins.hf.generate import open_context

import anydecode
from anydecode.workloads import FOLDER

pytestmark = pytest.mark.integration

WORKLOADS = FOLDER
EDITING = [json.loads(line)["prompt"] for line in (WORKLOADS / "editing.jsonl").read_text().splitlines()[:3]]
MAX_NEW = 40


@pytest.fixture(scope="module")
def hf():
    from anydecode.models import load_hf

    model, tokenizer = load_hf()
    return model, tokenizer


def chat_ids(tokenizer, prompts):
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                           tokenize=False) for p in prompts]
    return tokenizer(texts, return_tensors="pt", padding=True, padding_side="left")


@pytest.mark.parametrize("decoder", ["iad", "prompt_lookup", "aded"])
def test_greedy_speculation_equals_transformers_greedy(hf, decoder):
    model, tokenizer = hf
    for prompt in EDITING[:2]:
        enc = chat_ids(tokenizer, [prompt])
        native = model.generate(**enc, max_new_tokens=MAX_NEW, do_sample=False)
        ours = model.generate(**enc, custom_generate=H.generate, decoder=decoder, max_new_tokens=MAX_NEW,
                              return_dict_in_generate=True)
        assert ours.sequences.tolist() == native.tolist()
        stats = ours.anydecode_stats
        assert 0 < stats["accepted"] <= stats["drafted"] and stats["forward_passes"] >= 1, stats


def test_batched_speculation_equals_greedy_with_rows_accepting_differently(hf):
    model, tokenizer = hf
    enc = chat_ids(tokenizer, EDITING[:3])
    native = model.generate(**enc, max_new_tokens=MAX_NEW, do_sample=False)
    for decoder in ("iad", "aded"):
        ours = model.generate(**enc, custom_generate=H.generate, decoder=decoder, max_new_tokens=MAX_NEW)
        assert ours.tolist() == native.tolist(), decoder


def test_draft_model_speculation_equals_greedy_and_accepts_everything_from_the_same_model(hf):
    """The target as its own draft model: every draft token is accepted, output identical to greedy."""
    model, tokenizer = hf
    enc = chat_ids(tokenizer, EDITING[:2])
    native = model.generate(**enc, max_new_tokens=20, do_sample=False)
    dec = anydecode.get_decoder("speculative")
    ctx = open_context(model, enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=20,
                       eos_token_ids=[tokenizer.eos_token_id], draft_model=model)
    result = dec.run(dec.configure({"drafter": "draft_model"}), ctx)
    width = enc["input_ids"].shape[1]
    for row, seq in enumerate(result.sequences):
        expected = native[row, width:].tolist()
        assert seq == expected[: len(seq)] and len(seq) >= 1
    assert result.stats["acceptance_rate"] > 0.95


def test_iad_with_a_source_text_and_sampling_is_seeded(hf):
    model, tokenizer = hf
    enc = chat_ids(tokenizer, EDITING[:1])
    source = EDITING[0].split("\n\n", 1)[1]
    kwargs = {"custom_generate": H.generate, "decoder": "iad", "source": source, "anydecode_tokenizer": tokenizer,
              "max_new_tokens": 24, "do_sample": True, "temperature": 0.7, "seed": 3}
    a = model.generate(**enc, **kwargs)
    b = model.generate(**enc, **kwargs)
    assert a.tolist() == b.tolist()


def test_sampled_first_tokens_follow_the_target_and_a_wrong_temperature_is_rejected(hf):
    """Two-token prefixes from speculative sampling (prompt lookup, temperature 0.7, top_k 4) against exact
    probabilities from the model; samples drawn at temperature 1.3 (the twin) must fail the same test."""
    model, tokenizer = hf
    prompt = "Write one sentence about the sea."
    enc = chat_ids(tokenizer, [prompt] * 48)

    seen = {"drafted": 0, "accepted": 0}

    def draw(temperature, seeds):
        pairs = []
        for seed in seeds:
            out = model.generate(**enc, custom_generate=H.generate, decoder="prompt_lookup", max_new_tokens=2,
                                 do_sample=True, temperature=temperature, top_k=4, seed=seed,
                                 return_dict_in_generate=True)
            for key in seen:
                seen[key] += int(out.anydecode_stats[key])
            pairs += [tuple(r) for r in out.sequences[:, enc["input_ids"].shape[1]:].tolist()]
        return pairs

    from anydecode.algorithms.contracts.config import SamplingConfig
    from anydecode.algorithms.sampling.warpers import warped_probs

    config = SamplingConfig(temperature=0.7, top_k=4)
    one = chat_ids(tokenizer, [prompt])
    with torch.no_grad():
        first = warped_probs(model(**one).logits[0, -1].float(), config)
        firsts = torch.nonzero(first > 0).flatten().tolist()
        ids = torch.cat([one["input_ids"].repeat(len(firsts), 1), torch.tensor(firsts).unsqueeze(1)], dim=1)
        second = warped_probs(model(input_ids=ids).logits[:, -1].float(), config)
    law = {(a, b): float(first[a] * second[i, b]) for i, a in enumerate(firsts)
           for b in torch.nonzero(second[i] > 0).flatten().tolist()}
    assert chi_square_test(draw(0.7, range(4)), law).p_value > 1e-4
    # the verification path ran: drafts were made and rejected (the residual distribution drew the second token)
    assert seen["drafted"] > 0 and seen["drafted"] - seen["accepted"] > 0, seen
    assert chi_square_test(draw(1.5, range(4)), law).p_value < 1e-4
