"""The user-facing conformance suite (``anydecode conformance``): each decoder's claim, checked.

``--runtime toy`` checks exactly on toy models (float64 enumeration, TV below 1e-9) wherever the claim allows, plus
the references of the search decoders. Any other registered runtime (``hf``, ``llamacpp``, ``vllm``, a plugin's)
adds statistical checks through that runtime on its default model: chi-square tests with sample sizes from the
effect to detect, planted-bug negative controls, greedy identity with the runtime's own loop. ``--mutants`` applies
the planted bugs of ``mutants.py`` one at a time and reports how many the checks kill. ``--plot DIR`` draws one panel
per decoder and runtime: each check's measured value against its threshold.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .claims import CheckResult, check_claim
from .exact_checks import run_exact


def _decoders(names: Sequence[str] | None) -> list[Any]:
    from anydecode.registry import get_registry

    registry = get_registry()
    decoders = registry.decoders()
    if names:
        return [registry.decoder(n) for n in names]
    return [decoders[n] for n in sorted(decoders)]


def run_suite(runtime: str = "toy", quick: bool = False, progress: bool = False,
              decoders: Sequence[str] | None = None, mutants: bool = False,
              plot: str | None = None, kernels: str = "auto", native_only: bool = False) -> dict[str, Any]:
    """Check every selected decoder's claim; returns the JSON report (``failed`` counts failed checks and
    surviving mutants).

    ``kernels`` is the dispatcher's mode for the checks (:func:`anydecode.kernels.use`): ``"triton"`` runs the
    Triton kernels even on CPU tensors (interpreted), so the claims are proven on the kernels as well as on the
    torch references; the report's ``kernel_launches`` counts the kernels that ran. ``native_only`` runs only the
    checks of the runtime's own paths (``Runtime.native_draws``, ``native_speculative_greedy``): no exact toy
    checks and no checks through anydecode's loop.
    """
    from anydecode import kernels as dispatcher

    before = dispatcher.launches()
    with dispatcher.use(kernels):
        report = _run_suite(runtime, quick, progress, decoders, mutants, plot, native_only)
    after = dispatcher.launches()
    report["kernels"] = kernels
    report["kernel_launches"] = {k: n - before.get(k, 0) for k, n in after.items() if n > before.get(k, 0)}
    return report


def _run_suite(runtime: str, quick: bool, progress: bool, decoders: Sequence[str] | None, mutants: bool,
               plot: str | None, native_only: bool = False) -> dict[str, Any]:
    import sys

    started = time.perf_counter()
    selected = _decoders(decoders)
    results: list[CheckResult] = []
    for decoder in selected:
        check_claim(decoder.claim, decoder.claim_note, decoder.name)
        if progress:
            print(f"anydecode: checking {decoder.name} ({decoder.claim or 'no claim'}) on toy models",
                  file=sys.stderr, flush=True)
        if not native_only:
            results += run_exact(decoder, quick)
    if runtime != "toy":
        from anydecode.registry import get_registry

        from .runtime_checks import RuntimeEnv, run_runtime

        env = RuntimeEnv(get_registry().runtime(runtime), quick, native_only)
        try:
            for decoder in selected:
                if progress:
                    print(f"anydecode: checking {decoder.name} through {runtime}", file=sys.stderr, flush=True)
                results += run_runtime(decoder, env)
        finally:
            env.close()
    report: dict[str, Any] = {
        "runtime": runtime, "quick": quick, "native_only": native_only,
        "claims": {d.name: {"claim": d.claim, "note": d.claim_note, "source": d.source} for d in selected},
        "checks": [r.as_dict() for r in results],
    }
    failed = sum(1 for r in results if not r.passed and not r.skipped)
    if mutants:
        from .mutants import run_mutants

        if progress:
            print("anydecode: planting bugs", file=sys.stderr, flush=True)
        planted = run_mutants(quick=quick)
        killed = sum(m["killed"] for m in planted)
        report["mutants"] = planted
        report["kill_rate"] = killed / len(planted) if planted else 1.0
        failed += len(planted) - killed
    report["passed"] = sum(1 for r in results if r.passed and not r.skipped)
    report["skipped"] = sum(1 for r in results if r.skipped)
    report["failed"] = failed
    report["seconds"] = round(time.perf_counter() - started, 1)
    if plot:
        report["plot"] = str(write_plot(results, Path(plot), runtime))
    return report


def write_plot(results: Sequence[CheckResult], folder: Path, runtime: str) -> Path:
    """One panel per decoder and runtime: each measured check's value (log scale) against its threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[tuple[str, str], list[CheckResult]] = {}
    for r in results:
        if r.value is not None and r.threshold is not None and not r.skipped:
            panels.setdefault((r.decoder, r.runtime), []).append(r)
    folder.mkdir(parents=True, exist_ok=True)
    cols = 3
    rows = max(1, -(-len(panels) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, ((decoder, rt), checks) in zip(axes.flat, sorted(panels.items())):
        ax.axis("on")
        floor = 1e-18
        values = [max(abs(c.value or 0.0), floor) for c in checks]
        colours = ["tab:green" if c.passed else "tab:red" for c in checks]
        y = range(len(checks))
        ax.barh(list(y), values, color=colours)
        for i, c in enumerate(checks):
            ax.plot([max(c.threshold or floor, floor)] * 2, [i - 0.4, i + 0.4], color="black", lw=2)
        ax.set_xscale("log")
        ax.set_yticks(list(y))
        ax.set_yticklabels([f"{c.metric}: {c.name[:38]}" for c in checks], fontsize=7)
        ax.set_title(f"{decoder} on {rt}", fontsize=9)
    fig.suptitle(f"anydecode conformance ({runtime}): measured value (bar) against threshold (black line)")
    fig.tight_layout()
    path = folder / f"conformance-{runtime}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = ["run_suite", "write_plot"]
