"""The transformers adapter on the embedded model: greedy equals transformers' own, sampling is seeded,
the converted cache is rebuilt when damaged."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import anydecode.plugins.hf as hf
from anydecode import models

PROMPTS = [p for p in (Path(__file__).parent.parent / "data" / "prompts.txt").read_text().splitlines() if p]
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def model_and_tokenizer():
    return hf.load_default()


def test_greedy_equals_transformers_greedy_on_24_prompts(model_and_tokenizer):
    model, tok = model_and_tokenizer
    assert len(PROMPTS) >= 20
    mismatches = []
    for prompt in PROMPTS:
        ids = tok(prompt, return_tensors="pt").input_ids
        native = model.generate(ids, max_new_tokens=20, do_sample=False)
        ours = model.generate(ids, max_new_tokens=20, custom_generate=hf.generate, decoder="greedy")
        if not torch.equal(native, ours):
            mismatches.append(prompt)
    assert mismatches == []


def test_our_sessions_run_the_cpu_kernel_on_the_embedded_model_and_agree_with_transformers(model_and_tokenizer):
    """The greedy test above runs through oneDNN linear layers (kernels/cpu_linear.py); check that it really did,
    and that block logits agree with transformers' own path."""
    from anydecode.kernels import cpu_linear

    model, tok = model_and_tokenizer
    if not cpu_linear.available():  # another platform or PyTorch release: transformers' own path, unchanged
        assert not hf.HFSession(model, [2]).fast_linear
        return
    ids = tok(PROMPTS[0], return_tensors="pt").input_ids
    fast, plain = hf.HFSession(model, [2]), hf.HFSession(model, [2], fast_linear=False)
    assert fast.fast_linear and len(fast._linears) >= 7 * model.config.num_hidden_layers
    torch.testing.assert_close(fast.start(ids), plain.start(ids), rtol=0, atol=1e-3)
    block = [[int(t) for t in ids[0, 1:9]]]
    torch.testing.assert_close(fast.append(block), plain.append(block), rtol=0, atol=1e-3)
    assert all("forward" not in m.__dict__ for m in model.modules())  # the model is left as it was found


def test_batched_left_padded_greedy_equals_transformers(model_and_tokenizer):
    model, tok = model_and_tokenizer
    enc = tok(PROMPTS[:6], return_tensors="pt", padding=True, padding_side="left")
    native = model.generate(**enc, max_new_tokens=16, do_sample=False)
    ours = model.generate(**enc, max_new_tokens=16, custom_generate=hf.generate, decoder="greedy")
    assert torch.equal(native, ours)


def test_seeded_sampling_is_reproducible(model_and_tokenizer):
    model, tok = model_and_tokenizer
    ids = tok.apply_chat_template([{"role": "user", "content": "Tell me a story about a robot."}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    kw = dict(max_new_tokens=16, custom_generate=hf.generate, decoder="sample", do_sample=True, temperature=0.8)
    a, b, c = (model.generate(ids, seed=s, **kw) for s in (9, 9, 10))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_sampling_matches_the_target_distribution_statistically(model_and_tokenizer):
    from anydecode.conformance.runtime_sampling import RuntimeSampler
    from anydecode.conformance.stats import chi_square_test, sample_size_for_tv

    model, tok = model_and_tokenizer
    from anydecode.plugins.hf import HFModel

    sampler = RuntimeSampler("hf", HFModel(model, tok, "embedded"))
    kwargs = dict(temperature=1.5, top_k=8, top_p=0.7)
    expected, planted = sampler.two_token_targets("The weather today is", kwargs)
    samples = sampler.draw("The weather today is", kwargs, sample_size_for_tv(0.12, len(expected)))
    assert chi_square_test(samples, expected).passed()
    assert not chi_square_test(samples, planted).passed()


def test_damaged_cache_is_rebuilt_and_interrupted_conversion_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    # an interrupted conversion: the child process is killed while converting
    code = ("import os, threading, anydecode.models as m\n"
            "threading.Timer(8.0, lambda: os._exit(9)).start()\n"
            "m.ensure_hf_copy()\n")
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "XDG_CACHE_HOME": str(tmp_path)},
                          capture_output=True, timeout=600)
    final = models.converted_dir()
    if proc.returncode == 9:  # killed mid-way: no final folder, only a temporary one that is never used
        assert not final.exists()
    folder = models.ensure_hf_copy()
    assert folder == final and models.is_valid_conversion(folder)
    weights = next(folder.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert not models.is_valid_conversion(folder)
    assert models.is_valid_conversion(models.ensure_hf_copy())


def test_cli_run_on_transformers_with_chat():
    out = subprocess.run([sys.executable, "-m", "anydecode.cli", "run", "--runtime", "hf", "--chat", "--prompt",
                          "Say hello.", "--max-new-tokens", "8", "--json", "--quiet"], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    assert '"runtime": "hf"' in out.stdout
