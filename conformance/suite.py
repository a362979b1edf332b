"""The user-facing conformance suite (``anydecode conformance``): each check proves a distribution claim.

``toy`` checks are exact: the decoder's output distribution is enumerated in float64 on seeded toy models and
compared with an independent reference (total variation below 1e-9), and a planted bug must be rejected by the
same comparison. ``llamacpp`` and ``hf`` checks are statistical on the embedded model: a chi-square test over
two-token sequences drawn through the real runtime, with the sample size chosen from the effect to detect, and the
planted bug's distribution must be rejected on the same samples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from anydecode.algorithms.contracts.config import SamplingConfig
from anydecode.algorithms.sampling.warpers import warped_probs

from .enumerate import enumerate_sequences, total_variation
from .reference import planted_top_p_before_temperature, target_distribution
from .stats import chi_square_test, sample_size_for_tv
from .toy import ToyModel, toy_context

#: sampling settings the suite covers: plain, temperature, top-k, top-p, min-p and all together
SETTINGS = (
    dict(temperature=1.0),
    dict(temperature=0.6),
    dict(temperature=1.4, top_k=3),
    dict(temperature=0.8, top_p=0.7),
    dict(temperature=1.0, min_p=0.2),
    dict(temperature=0.7, top_k=4, top_p=0.9, min_p=0.05),
)


@dataclasses.dataclass
class Check:
    name: str
    passed: bool
    detail: str


def _sample_step(config: SamplingConfig) -> Callable[[ToyModel, tuple, tuple], np.ndarray]:
    def step(model: ToyModel, generated: tuple, prompt: tuple) -> np.ndarray:
        logits = model.logits(prompt + generated)
        return warped_probs(logits, config).numpy()
    return step


def _reference_step(kwargs: dict[str, Any], planted: bool = False) -> Callable[[ToyModel, tuple, tuple], np.ndarray]:
    fn = planted_top_p_before_temperature if planted else target_distribution

    def step(model: ToyModel, generated: tuple, prompt: tuple) -> np.ndarray:
        return fn(model.logits(prompt + generated).numpy(), **kwargs)
    return step


def exact_sample_checks(seeds: range = range(3), vocab: int = 6, length: int = 3) -> list[Check]:
    """``sample`` equals the reference exactly on toy models; the planted bug does not."""
    checks = []
    worst, planted_best = 0.0, 0.0
    for seed in seeds:
        model = ToyModel.seeded(vocab, seed=seed, eos_token_id=vocab - 1, concentration=0.5)
        for kwargs in SETTINGS:
            config = SamplingConfig(**kwargs)
            ours = enumerate_sequences(model, (1,), length, _sample_step(config))
            ref = enumerate_sequences(model, (1,), length, _reference_step(kwargs))
            worst = max(worst, total_variation(ours, ref))
            if kwargs.get("top_p", 1.0) < 1.0 and kwargs["temperature"] != 1.0:
                bug = enumerate_sequences(model, (1,), length, _reference_step(kwargs, planted=True))
                planted_best = max(planted_best, total_variation(bug, ref))
    checks.append(Check("sample: exact distribution on toy models", worst < 1e-9, f"max TV {worst:.2e} (< 1e-9)"))
    checks.append(Check("sample: planted bug (top_p before temperature) rejected", planted_best > 1e-6,
                        f"largest TV of the bug {planted_best:.2e} (> 1e-6)"))
    return checks


def loop_matches_step_checks(draws: int = 4000, seed: int = 0) -> list[Check]:
    """The shared loop's draws (toy session, seeded sampler) follow the enumerated distribution (chi-square)."""
    from anydecode.algorithms.sampling.decoders import SAMPLE

    model = ToyModel.seeded(5, seed=seed, eos_token_id=4, concentration=0.7)
    kwargs = dict(temperature=0.8, top_k=4, top_p=0.95)
    expected = enumerate_sequences(model, (1,), 2, _reference_step(kwargs))
    samples = []
    for i in range(draws):
        config = SamplingConfig(seed=seed * 100_000 + i, **kwargs)
        result = SAMPLE.run(config, toy_context(model, [[1]], 2))
        samples.append(tuple(result.sequences[0]))
    res = chi_square_test(samples, expected)
    return [Check("sample: shared loop draws follow the target (chi-square)", res.passed(),
                  f"p={res.p_value:.3g}, n={res.n}, categories={res.categories}")]


def runtime_checks(runtime: str, quick: bool = False, progress: bool = False) -> list[Check]:
    """Two-token sequences sampled through the real runtime vs the exact target from the model's own logits."""
    from anydecode.conformance.runtime_sampling import RuntimeSampler

    # settings where the planted bug (nucleus before temperature) moves the target by TV of about 0.23
    kwargs = dict(temperature=1.5, top_k=8, top_p=0.7)
    sampler = RuntimeSampler(runtime)
    expected, planted = sampler.two_token_targets("The weather today is", kwargs)
    n = sample_size_for_tv(0.12 if quick else 0.08, categories=len(expected))
    try:
        samples = sampler.draw("The weather today is", kwargs, n, progress=progress)
    finally:
        sampler.close()
    fit = chi_square_test(samples, expected)
    bug = chi_square_test(samples, planted)
    tv = total_variation(expected, planted)
    return [
        Check(f"sample on {runtime}: two-token sequences follow the target", fit.passed(),
              f"p={fit.p_value:.3g}, n={fit.n}, categories={fit.categories}"),
        Check(f"sample on {runtime}: planted bug rejected on the same draws", not bug.passed(),
              f"p={bug.p_value:.3g}, TV(bug, target)={tv:.3f}"),
    ]


def run_suite(runtime: str = "toy", quick: bool = False, progress: bool = False) -> dict[str, Any]:
    checks = exact_sample_checks()
    checks += loop_matches_step_checks(draws=1500 if quick else 4000)
    if runtime != "toy":
        checks += runtime_checks(runtime, quick=quick, progress=progress)
    passed = sum(c.passed for c in checks)
    return {"runtime": runtime, "checks": [dataclasses.asdict(c) for c in checks], "passed": passed,
            "failed": len(checks) - passed}


__all__ = ["Check", "exact_sample_checks", "loop_matches_step_checks", "run_suite", "runtime_checks"]
