"""``dbs`` reproduces transformers 4.x group beam search and ``beam`` transformers 5's own beam search.

The model is the tiny random-weight Llama of ``conformance/tiny_llama.py``, built the same way by the
transformers 4.x environment that recorded ``conformance/data/dbs_golden_tx4.json`` (``benchmarks/golden/``).
Both run through ``model.generate(..., custom_generate=anydecode.plugins.hf.generate)``.
"""

from __future__ import annotations


import itertools
import json
from pathlib import Path

import pytest
import torch

from anydecode.conformance.tiny_llama import build_tiny_llama, golden_path

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = json.loads(golden_path().read_text())


def load_tiny_llama():
    return build_tiny_llama()


@pytest.fixture(scope="module")
def tiny():
    return load_tiny_llama()


def cut(ids, eos):
    for i, t in enumerate(ids):
        if t in eos:
            return ids[: i + 1]
    return ids


def anydecode_generate(model, prompt, decoder, **settings):
    from anydecode.plugins import hf

    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), custom_generate=hf.generate, decoder=decoder,
                         return_dict_in_generate=True, pad_token_id=model.config.pad_token_id, **settings)
    eos = {model.config.eos_token_id}
    return [cut(row[len(prompt):].tolist(), eos) for row in out.sequences], out.sequences_scores.tolist()


def test_the_rebuilt_tiny_model_is_the_recorded_one(tiny):
    fp = GOLDEN["tiny"]["fingerprint"]
    with torch.no_grad():
        logits = tiny(torch.tensor([fp["prompt"]])).logits[0, -1, :8]
    assert logits.tolist() == pytest.approx(fp["logits"], abs=1e-4)


@pytest.mark.parametrize("case", GOLDEN["tiny"]["cases"], ids=lambda c: "beams{num_beams}-groups{num_beam_groups}-"
                         "lp{length_penalty}-es{early_stopping}".format(**c["settings"]))
def test_dbs_reproduces_transformers_4_group_beam_search(tiny, case):
    sequences, scores = anydecode_generate(tiny, case["prompt"], "dbs", **case["settings"])
    assert sequences == case["sequences"]
    assert scores == pytest.approx(case["scores"], abs=1e-4)


def test_planted_bug_penalty_on_the_wrong_group_breaks_the_golden_match(tiny):
    case = GOLDEN["tiny"]["cases"][0]
    settings = dict(case["settings"], diversity_penalty=case["settings"]["diversity_penalty"] * 3)
    sequences, scores = anydecode_generate(tiny, case["prompt"], "dbs", **settings)
    assert sequences != case["sequences"] or scores != pytest.approx(case["scores"], abs=1e-4)


GRID = (list(itertools.product([[5, 17, 42, 9]], [2, 5], [1.0, 2.0], [False, True, "never"]))
        + [([60, 61, 62], 3, 0.0, False), ([60, 61, 62], 4, -0.5, "never"), ([7, 3], 2, 2.0, True)])


@pytest.mark.parametrize("prompt,beams,length_penalty,early_stopping", GRID)
def test_beam_equals_transformers_5_num_beams_generation(tiny, prompt, beams, length_penalty, early_stopping):
    settings = {"num_beams": beams, "num_return_sequences": beams, "length_penalty": length_penalty,
                    "early_stopping": early_stopping, "max_new_tokens": 9}
    ids = torch.tensor([prompt])
    ref = tiny.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, return_dict_in_generate=True,
                        output_scores=True, pad_token_id=1, **settings)
    expected = [cut(row[len(prompt):].tolist(), {1}) for row in ref.sequences]
    sequences, scores = anydecode_generate(tiny, prompt, "beam", **settings)
    assert sequences == expected
    assert scores == pytest.approx(ref.sequences_scores.tolist(), abs=1e-4)


def test_deal_with_lam_zero_equals_beam_through_transformers(tiny):
    prompt = [5, 17, 42, 9]
    beam, beam_scores = anydecode_generate(tiny, prompt, "beam", num_beams=3, num_return_sequences=3,
                                           max_new_tokens=10)
    deal, deal_scores = anydecode_generate(tiny, prompt, "deal", max_new_tokens=10,
                                           decoder_config={"beam": 3, "k": 6, "lam": 0.0,
                                                           "num_return_sequences": 3})
    assert deal == beam and deal_scores == pytest.approx(beam_scores, abs=1e-6)
