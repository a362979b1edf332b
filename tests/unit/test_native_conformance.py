"""The conformance checks of a runtime's native paths (``Runtime.native_draws``, ``Runtime.native_speculative_greedy``),
on a third party's toy runtime that offers them: they run only where offered, pass on a faithful runtime, and fail
when its native hook skips the transform or its speculation accepts no drafts. The real runtime (vLLM) is checked in
tests/conformance/test_conformance.py."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

import anydecode
from anydecode.algorithms.contracts.config import SamplingConfig
from anydecode.algorithms.contracts.runtime import NativeSpeculation, Runtime
from anydecode.algorithms.contracts.transform import LogitsTransform
from anydecode.conformance.runtime_checks import RuntimeEnv, native_checks_for, run_runtime
from anydecode.registry import get_decoder, get_registry
from tests.helpers import toy_runtime_plugin as plugin


class NativeDigits(plugin.DigitsRuntime):
    """The digits runtime with native paths: its own sampler (a numpy generator) with the decoder's transform as its
    logits hook, and a speculative path that reports its own draft counters."""

    name = "digits-native"

    def __init__(self, skip_transform: bool = False, accepted: int = 5) -> None:
        super().__init__()
        self.skip_transform = skip_transform
        self.accepted = accepted

    def native_draws(self, handle, decoder, settings, prompt_ids, n, max_new_tokens):
        dec = get_decoder(decoder)
        ctx = self.open(handle, [list(prompt_ids)], max_new_tokens=max_new_tokens)
        transform = dec.transform(dec.configure(dict(settings)), ctx)
        rng = np.random.default_rng(7)
        out = []
        for _ in range(n):
            state, ids = transform.start(list(prompt_ids)), []
            while len(ids) < max_new_tokens and (not ids or ids[-1] != 0):
                logits = torch.log(torch.as_tensor(handle.probs(list(prompt_ids) + ids), dtype=torch.float64))
                if not self.skip_transform:
                    logits = transform.apply(state, ids, logits)
                p = torch.softmax(logits.double(), -1).numpy()
                ids.append(int(rng.choice(len(p), p=p / p.sum())))
            out.append(tuple(ids))
        return out

    def native_speculative_greedy(self, handle, drafter, settings, prompts, max_new_tokens):
        greedy = self.baselines(handle)["native-greedy"]
        outputs = [greedy(list(p), max_new_tokens, {})[0] for p in prompts]
        return NativeSpeculation(outputs, draft_tokens=8, accepted_tokens=self.accepted, note="toy")


def checks(runtime: Runtime, decoder: str) -> list:
    env = RuntimeEnv(runtime, quick=True)
    try:
        return [r for check in native_checks_for(get_decoder(decoder), env) for r in check()]
    finally:
        env.close()


def test_a_runtime_without_native_paths_gets_no_native_checks():
    env = RuntimeEnv(plugin.DigitsRuntime(), quick=True)
    assert not env.runtime.offers("native_draws") and not env.runtime.offers("native_speculative_greedy")
    assert native_checks_for(get_decoder("sample"), env) == []
    assert all(not r.name.startswith("native:") for r in run_runtime(get_decoder("greedy"), env))


@pytest.mark.parametrize("decoder", ["sample", "gcd", "iad", "speculative"])
def test_native_checks_pass_on_a_faithful_runtime(decoder):
    assert NativeDigits().offers("native_draws")
    results = checks(NativeDigits(), decoder)
    assert results and all(r.passed and not r.skipped for r in results), [r.detail for r in results]
    assert all(r.name.startswith("native:") for r in results)


class Flatten(LogitsTransform):
    """A third party's sampling transform: halves every logit (temperature 2 on top of the config's)."""

    def apply(self, state, generated_ids, logits):
        return logits / 2


FLATTEN = anydecode.Decoder(name="flatten", config_cls=SamplingConfig, kind="transform", claim="sampling",
                            claim_note="ancestral sampling at twice the temperature",
                            make_transform=lambda config, context: Flatten())


@pytest.fixture
def flatten():
    plugin = types.SimpleNamespace(anydecode_register_decoders=anydecode.hookimpl(lambda register: register(FLATTEN)))
    with get_registry().plugin(plugin, name="flatten-plugin"):
        yield


def test_a_third_party_sampling_decoder_is_checked_against_its_own_law(flatten):
    (good,) = checks(NativeDigits(), "flatten")
    (bad,) = checks(NativeDigits(skip_transform=True), "flatten")
    assert good.passed and "own sampler" in good.detail, good.detail
    assert not bad.passed, bad.detail


@pytest.mark.parametrize("decoder", ["sample", "gcd"])
def test_a_native_hook_that_skips_the_transform_fails(decoder):
    first = checks(NativeDigits(skip_transform=True), decoder)[0]
    assert not first.passed, first.detail


def test_native_speculation_that_accepts_no_drafts_fails():
    (result,) = checks(NativeDigits(accepted=0), "prompt_lookup")
    assert not result.passed and "0/8 draft tokens accepted" in result.detail
