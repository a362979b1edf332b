"""``anydecode conformance`` in CI: every built-in decoder and the example plugin's decoder meet their claims,
exactly on toy models with every planted bug caught, and statistically through each real runtime.

The runtime runs share one loaded model per runtime and take a few minutes each (``--quick`` sample sizes).
"""

from __future__ import annotations

import json

import pytest

from anydecode.conformance.claims import CLAIMS
from anydecode.conformance.mutants import MUTANTS
from anydecode.conformance.suite import run_suite
from anydecode.registry import get_registry


def failures(report: dict) -> list[str]:
    out = [f"{c['decoder']}/{c['name']} on {c['runtime']}: {c['detail']}" for c in report["checks"]
           if not c["passed"] and not c["skipped"]]
    out += [f"mutant survived: {m['mutant']} {m['error'] or ''}" for m in report.get("mutants", [])
            if not m["killed"]]
    return out


def test_every_registered_decoder_states_a_claim_from_the_vocabulary():
    for name, decoder in get_registry().decoders().items():
        assert decoder.claim in CLAIMS, (name, decoder.claim)
        assert decoder.claim_note, name


def test_toy_suite_passes_and_kills_every_planted_bug(tmp_path):
    report = run_suite("toy", quick=True, mutants=True, plot=str(tmp_path))
    assert not failures(report), failures(report)
    assert report["kill_rate"] == 1.0 and len(report["mutants"]) == len(MUTANTS) >= 8
    assert {c["decoder"] for c in report["checks"]} >= set(get_registry().decoders())
    assert (tmp_path / "conformance-toy.png").stat().st_size > 10_000
    (tmp_path / "report.json").write_text(json.dumps(report, default=str))


def test_the_same_claims_hold_on_the_triton_kernels_interpreted():
    """Speculative decoding, gcd and asap with the dispatcher forced to the Triton kernels (Triton's interpreter
    on CPU tensors): the exact checks pass, and the kernels, not the torch references, did the masking and the
    chain verification."""
    report = run_suite("toy", quick=True, decoders=["speculative", "gcd", "asap"], kernels="triton")
    assert not failures(report), failures(report)
    assert report["kernel_launches"].get("masking.launch", 0) > 0, report["kernel_launches"]
    assert report["kernel_launches"].get("verify.launch", 0) > 0, report["kernel_launches"]


def test_every_mutant_still_applies_to_the_code_it_plants_a_bug_in():
    for mutant in MUTANTS:
        mutant.patched_code()  # MutantError when the snippet left its function


#: runtime -> decoders whose claims it also checks through the runtime's own native paths (vLLM: draws by its own
#: sampler through anydecode's logits processor; greedy through its speculative decoding with anydecode's proposers)
NATIVE = {"vllm": {"sample", "gcd", "iad", "aded", "prompt_lookup", "suffix", "speculative"}}


@pytest.mark.integration
@pytest.mark.parametrize("runtime", ["hf", "llamacpp", "vllm"])
def test_quick_suite_through_a_real_runtime(runtime):
    # vLLM: its own paths only (sampler + logits processor, speculative decoding + proposers); its loop checks run
    # the same code as the other runtimes' and take about 25 minutes through the engine (docs/conformance.md)
    native_only = runtime in NATIVE
    report = run_suite(runtime, quick=True, decoders=sorted(NATIVE[runtime]) if native_only else None,
                       native_only=native_only)
    assert not failures(report), failures(report)
    assert any(c["runtime"] == runtime for c in report["checks"])
    native = {c["decoder"] for c in report["checks"] if c["name"].startswith("native:") and not c["skipped"]}
    assert native >= NATIVE.get(runtime, set()), native
