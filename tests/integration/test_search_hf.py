"""Search decoders in transformers on the embedded model, through ``custom_generate=anydecode.plugins.hf.generate``.

``dbs`` must reproduce the transformers 4.x group beam search outputs recorded in ``conformance/data/dbs_golden_tx4.json``
(``benchmarks/golden/make_golden.py``) token for token with scores within 1e-4; ``beam`` must equal transformers 5's
own ``num_beams`` generation; ``best_of_n`` must pick among exactly the samples ``sample`` draws with its seed.
"""

from __future__ import annotations

import json

import pytest
import torch

from anydecode.conformance.tiny_llama import golden_path
from anydecode.plugins import hf

from anydecode.models import load_hf

pytestmark = pytest.mark.integration
GOLDEN = json.loads(golden_path().read_text())["embedded"]


@pytest.fixture(scope="module")
def model_and_tokenizer():
    model, tokenizer = load_hf()
    model.config._attn_implementation = "eager"  # as the golden run
    return model, tokenizer


def cut(ids, eos):
    for i, t in enumerate(ids):
        if t in eos:
            return ids[: i + 1]
    return ids


def run(model, prompt, **kwargs):
    ids = torch.tensor([prompt])
    return model.generate(ids, attention_mask=torch.ones_like(ids), return_dict_in_generate=True,
                          pad_token_id=GOLDEN["pad_token_id"], **kwargs)


def test_the_model_is_the_one_the_golden_outputs_came_from(model_and_tokenizer):
    model, _ = model_and_tokenizer
    fp = GOLDEN["fingerprint"]
    with torch.no_grad():
        logits = model(torch.tensor([fp["prompt"]])).logits[0, -1, :8]
    assert logits.tolist() == pytest.approx(fp["logits"], abs=1e-3)


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=lambda c: "prompt{}-beams{}-groups{}".format(
    len(c["prompt"]), c["settings"]["num_beams"], c["settings"]["num_beam_groups"]))
def test_dbs_reproduces_transformers_4_on_the_embedded_model(model_and_tokenizer, case):
    model, _ = model_and_tokenizer
    out = run(model, case["prompt"], custom_generate=hf.generate, decoder="dbs", **case["settings"])
    eos = set(GOLDEN["eos_token_ids"])
    got = [cut(row[len(case["prompt"]):].tolist(), eos) for row in out.sequences]
    assert got == case["sequences"]
    assert out.sequences_scores.tolist() == pytest.approx(case["scores"], abs=1e-4)


def test_beam_equals_transformers_5_beam_search(model_and_tokenizer):
    model, _ = model_and_tokenizer
    prompt = GOLDEN["cases"][0]["prompt"]
    settings = {"num_beams": 3, "num_return_sequences": 3, "max_new_tokens": 10, "length_penalty": 1.0}
    ref = run(model, prompt, do_sample=False, output_scores=True, **settings)
    out = run(model, prompt, custom_generate=hf.generate, decoder="beam", **settings)
    eos = set(GOLDEN["eos_token_ids"])
    assert [cut(r[len(prompt):].tolist(), eos) for r in out.sequences] == \
        [cut(r[len(prompt):].tolist(), eos) for r in ref.sequences]
    assert out.sequences_scores.tolist() == pytest.approx(ref.sequences_scores.tolist(), abs=1e-4)


def test_best_of_n_picks_among_the_samples_sample_draws(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prompt = GOLDEN["cases"][0]["prompt"]
    n, seed = 3, 11
    ids = torch.tensor([prompt] * n)
    samples = model.generate(ids, attention_mask=torch.ones_like(ids), custom_generate=hf.generate,
                             decoder="sample", seed=seed, do_sample=True, temperature=0.9, top_k=0, max_new_tokens=8,
                             pad_token_id=GOLDEN["pad_token_id"])
    texts = [tokenizer.decode(r[len(prompt):], skip_special_tokens=True) for r in samples]
    out = run(model, prompt, custom_generate=hf.generate, decoder="best_of_n", num_samples=n, seed=seed,
              do_sample=True, temperature=0.9, top_k=0, max_new_tokens=8, reward="regex", pattern="sea",
              anydecode_tokenizer=tokenizer)
    chosen = tokenizer.decode(out.sequences[0][len(prompt):], skip_special_tokens=True)
    assert chosen in texts
    rewards = [1.0 if "sea" in t else 0.0 for t in texts]
    assert rewards[texts.index(chosen)] == max(rewards)


def test_deal_keyword_reward_through_transformers(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    text = "<|im_start|>user\nWrite one sentence using: sea, boat, storm.<|im_end|>\n<|im_start|>assistant\n"
    prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
    out = run(model, prompt, custom_generate=hf.generate, decoder="deal", max_new_tokens=20,
              decoder_config={"reward": "keywords", "keywords": "sea,boat,storm", "beam": 2, "k": 4, "lookahead": 4,
                              "lam": 2.0}, anydecode_tokenizer=tokenizer)
    assert out.anydecode_stats["reward_calls"] > 0
    answer = tokenizer.decode(out.sequences[0][len(prompt):], skip_special_tokens=True).lower()
    assert sum(k in answer for k in ("sea", "boat", "storm")) >= 2, answer
