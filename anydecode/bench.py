"""``anydecode bench``: a decoder against a baseline, side by side in one process, on a workload.

A and B run alternately on the same prompts (the order flips every prompt, so warm caches favour neither), and
the report gives tokens/s of each and their ratio twice: with the prompt's forward pass (end to end, as a user
sees it) and without it (decoding speed; the prompt's pass is the same work in A and B: ours is timed around
the session's prefill, a native baseline until its first token), the share of identical outputs and the
decoder's statistics, as JSON and as a PNG.

For a speculative decoder (claim ``lossless``) the same run also times the limit: speculative decoding with the
``oracle`` drafter, whose drafts are the output itself (recorded beforehand with ``greedy``, or ``sample`` and the
same seed under sampling), and reports its speedup over B and ours as a share of it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

NATIVE = ("native-greedy", "native-greedy-default", "native-prompt-lookup", "native-assisted")


def load_workload(path: str | None, limit: int | None) -> list[dict[str, Any]]:
    from anydecode import workloads
    from anydecode.cli import UsageError

    file = Path(path) if path else workloads.path("chat")
    if not file.is_file() and path and workloads.path(path).is_file():
        file = workloads.path(path)
    if not file.is_file():
        raise UsageError(f"workload not found: {file}; shipped workloads: {', '.join(workloads.names())}")
    items = []
    for n, line in enumerate(file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            items.append({"prompt": str(item["prompt"]), "chat": bool(item.get("chat", False)),
                          "max_new_tokens": int(item.get("max_new_tokens", 128))})
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"{file}:{n}: not a workload line ({exc}); expected "
                             '{"prompt": ..., "chat": bool, "max_new_tokens": N}') from None
    return items[:limit] if limit else items


Runner = Callable[[dict[str, Any]], tuple[list[int], dict[str, Any]]]


def _sampling_kwargs(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: settings[k] for k in ("temperature", "top_k", "top_p", "min_p") if k in settings}


def recorded_continuation(runtime: Any, handle: Any, ids: list[int], sampling: dict[str, Any],
                          max_new_tokens: int) -> list[int]:
    """The tokens the oracle drafts: the greedy output, or under sampling what the speculative loop samples with
    the same seed when it drafts nothing (deterministic drafts are verified by coupling, so every drafter's output
    is this one, and perfect drafts are accepted whole)."""
    from anydecode.algorithms.generation import generate_on
    from anydecode.registry import get_decoder

    runtime.reset(handle)
    if float(sampling.get("temperature", 0.0)) > 0:
        dec = get_decoder("speculative")
        config = dec.configure({**sampling, "drafter": "oracle", "continuation_ids": ()})
    else:
        dec = get_decoder("greedy")
        config = dec.configure({})
    return generate_on(runtime, handle, [ids], dec, config, max_new_tokens=max_new_tokens).token_ids


def oracle_runner(runtime: Any, handle: Any, settings: dict[str, Any]) -> Runner:
    """Speculative decoding with perfect drafts: the output recorded (untimed) by :func:`recorded_continuation`
    is what the oracle drafter proposes."""
    from anydecode.algorithms.generation import generate_on
    from anydecode.registry import get_decoder

    sampling = {k: v for k, v in settings.items() if k in ("temperature", "top_k", "top_p", "min_p", "seed")}
    if float(sampling.get("temperature", 0.0)) > 0:
        sampling.setdefault("seed", 0)  # the recording and the oracle's run must draw the same numbers
    speculative = get_decoder("speculative")

    def run(item: dict[str, Any]) -> tuple[list[int], dict[str, Any]]:
        ids = runtime.encode(handle, item["prompt"], chat=item["chat"])
        recorded = recorded_continuation(runtime, handle, ids, sampling, item["max_new_tokens"])
        config = speculative.configure({**sampling, "drafter": "oracle", "continuation_ids": tuple(recorded)})
        runtime.reset(handle)
        started = time.perf_counter()
        out = generate_on(runtime, handle, [ids], speculative, config, max_new_tokens=item["max_new_tokens"])
        return out.token_ids, {**out.stats, "oracle_seconds": time.perf_counter() - started}
    return run


def runners(runtime: Any, handle: Any, decoder: str, settings: dict[str, Any], baseline: str) -> tuple[Runner, Runner]:
    """A (ours) and B (a runtime's own loop, or another decoder) on ``runtime``'s loaded model."""
    from anydecode.algorithms.generation import generate_on
    from anydecode.cli import UsageError
    from anydecode.registry import get_decoder

    def ours(name: str, cfg: dict[str, Any]) -> Runner:
        dec = get_decoder(name)
        config = dec.configure(cfg)

        def run(item: dict[str, Any]) -> tuple[list[int], dict[str, Any]]:
            ids = runtime.encode(handle, item["prompt"], chat=item["chat"])
            runtime.reset(handle)
            out = generate_on(runtime, handle, [ids], dec, config, max_new_tokens=item["max_new_tokens"])
            return out.token_ids, out.stats
        return run

    a = ours(decoder, settings)
    native = runtime.baselines(handle)
    if baseline in native:
        loop = native[baseline]
        sampling = _sampling_kwargs(settings)

        def b(item: dict[str, Any]) -> tuple[list[int], dict[str, Any]]:
            ids = runtime.encode(handle, item["prompt"], chat=item["chat"])
            runtime.reset(handle)
            return loop(ids, item["max_new_tokens"], sampling)
        return a, b
    if baseline.startswith("native-"):
        raise UsageError(f"runtime {runtime.name!r} has no baseline {baseline!r}; its own loops: "
                         f"{', '.join(sorted(native)) or 'none'}")
    return a, ours(baseline, {k: v for k, v in settings.items() if k in ("temperature", "top_k", "top_p", "seed")})


def _strip_eos(ids: list[int], eos: set[int]) -> list[int]:
    return [t for t in ids if t not in eos]


def run_bench(runtime_name: str, decoder: str, settings: dict[str, Any], baseline: str, items: list[dict[str, Any]],
              progress: bool = False, model: str | None = None, with_oracle: bool = True) -> dict[str, Any]:
    from anydecode.cli import runtime_named
    from anydecode.registry import get_decoder

    dec = get_decoder(decoder)
    config = dec.configure(settings, from_strings=True)
    cfg = {k: v for k, v in config.as_dict().items() if k in settings}
    if baseline not in NATIVE:
        get_decoder(baseline)
    runtime = runtime_named(runtime_name)
    decoders = [dec] + ([get_decoder(baseline)] if baseline not in NATIVE else [])
    handle = runtime.load_for(model, decoders)
    try:
        a, b = runners(runtime, handle, decoder, cfg, baseline)
        oracle = oracle_runner(runtime, handle, cfg) if dec.claim == "lossless" and with_oracle else None
        eos_id = runtime.tokenizer(handle).eos_token_id
        report = _alternate(a, b, items, {eos_id} if eos_id is not None else set(), progress, oracle)
    finally:
        runtime.close(handle)
    report.update({"runtime": runtime_name, "decoder": decoder, "settings": cfg, "baseline": baseline})
    return report


def _alternate(a: Runner, b: Runner, items: list[dict[str, Any]], eos: set[int], progress: bool,
               oracle: Runner | None = None) -> dict[str, Any]:
    """Run A and B alternately on every item (the order flips every prompt) and compare them; the oracle (perfect
    drafts) runs third on each item, timed from its own speculative run only."""
    # warm-up, not timed, on a prompt outside the workload (a drafter that learns across requests, like aded,
    # must not have seen a workload prompt's output before it is timed on it)
    warm = {"prompt": "Say hello.", "chat": items[0]["chat"], "max_new_tokens": 8}
    a(warm)
    b(warm)
    rows = []
    totals = {"a_tokens": 0, "b_tokens": 0, "a_seconds": 0.0, "b_seconds": 0.0, "a_prefill_seconds": 0.0,
              "b_prefill_seconds": 0.0, "oracle_tokens": 0, "oracle_seconds": 0.0, "oracle_prefill_seconds": 0.0}
    oracle_agg: dict[str, float] = {}
    agg: dict[str, float] = {}
    for i, item in enumerate(items):
        order = (("a", a), ("b", b)) if i % 2 == 0 else (("b", b), ("a", a))
        res: dict[str, Any] = {}
        for label, runner in order:
            started = time.perf_counter()
            ids, stats = runner(item)
            res[label] = (ids, time.perf_counter() - started, stats)
        a_ids, a_s, a_stats = res["a"]
        b_ids, b_s, b_stats = res["b"]
        totals["a_prefill_seconds"] += float(a_stats.get("prefill_seconds", 0.0))
        totals["b_prefill_seconds"] += float(b_stats.get("prefill_seconds", 0.0))
        totals["a_tokens"] += len(a_ids)
        totals["b_tokens"] += len(b_ids)
        totals["a_seconds"] += a_s
        totals["b_seconds"] += b_s
        for key in ("drafted", "accepted", "target_forward_passes", "new_tokens"):
            if isinstance(a_stats.get(key), (int, float)):
                agg[key] = agg.get(key, 0) + a_stats[key]
        row = {"a_tokens": len(a_ids), "b_tokens": len(b_ids), "a_seconds": a_s, "b_seconds": b_s,
               "identical": _strip_eos(a_ids, eos) == _strip_eos(b_ids, eos)}
        if oracle is not None:
            o_ids, o_stats = oracle(item)
            totals["oracle_tokens"] += len(o_ids)
            totals["oracle_seconds"] += float(o_stats["oracle_seconds"])
            totals["oracle_prefill_seconds"] += float(o_stats.get("prefill_seconds", 0.0))
            for key in ("drafted", "accepted"):
                oracle_agg[key] = oracle_agg.get(key, 0) + float(o_stats.get(key, 0))
            row["oracle_seconds"] = float(o_stats["oracle_seconds"])
        rows.append(row)
        if progress:
            print(f"\r{i + 1}/{len(items)} prompts", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    a_tps = totals["a_tokens"] / max(totals["a_seconds"], 1e-9)
    b_tps = totals["b_tokens"] / max(totals["b_seconds"], 1e-9)
    # decoding speed without the prompt's forward pass (the same work in A and B), as llama.cpp reports "eval"
    a_dec = totals["a_tokens"] / max(totals["a_seconds"] - totals["a_prefill_seconds"], 1e-9)
    b_dec = totals["b_tokens"] / max(totals["b_seconds"] - totals["b_prefill_seconds"], 1e-9)
    report = {
        "prompts": len(items), "a_tokens_per_s": a_tps, "b_tokens_per_s": b_tps, "ratio": a_tps / max(b_tps, 1e-9),
        "a_decode_tokens_per_s": a_dec, "b_decode_tokens_per_s": b_dec, "decode_ratio": a_dec / max(b_dec, 1e-9),
        "identical_share": sum(r["identical"] for r in rows) / len(rows),
        "decoder_stats": agg, "rows": rows, **totals,
    }
    if oracle is not None and totals["oracle_seconds"] > 0:
        o_tps = totals["oracle_tokens"] / totals["oracle_seconds"]
        o_dec = totals["oracle_tokens"] / max(totals["oracle_seconds"] - totals["oracle_prefill_seconds"], 1e-9)
        report["oracle_ratio"] = o_tps / max(b_tps, 1e-9)
        report["oracle_decode_ratio"] = o_dec / max(b_dec, 1e-9)
        # ours as a share of the limit: of the speedup the oracle gets over B, how much we get
        report["oracle_share"] = report["ratio"] / max(report["oracle_ratio"], 1e-9)
        report["oracle_acceptance"] = oracle_agg.get("accepted", 0) / max(oracle_agg.get("drafted", 0), 1)
    if agg.get("drafted"):
        report["acceptance_rate"] = agg.get("accepted", 0) / agg["drafted"]
    if agg.get("target_forward_passes"):
        report["tokens_per_target_pass"] = totals["a_tokens"] / agg["target_forward_passes"]
    return report


def write_png(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    speedups = [(r["a_tokens"] / r["a_seconds"]) / max(r["b_tokens"] / r["b_seconds"], 1e-9) for r in report["rows"]]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(range(len(speedups)), speedups, color=["tab:green" if r["identical"] else "tab:orange"
                                                    for r in report["rows"]])
    ax.axhline(1.0, color="black", lw=0.8)
    ax.axhline(report["ratio"], color="tab:blue", ls="--", label=f"overall {report['ratio']:.2f}x")
    ax.set_xlabel("prompt")
    ax.set_ylabel("tokens/s ratio")
    ax.set_title(f"{report['decoder']} vs {report['baseline']} ({report['runtime']}); orange: output differs")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def cmd_bench(args: argparse.Namespace) -> int:
    from anydecode.cli import UsageError, parse_settings

    items = load_workload(args.workload, args.limit)
    if not items:
        raise UsageError("the workload is empty")
    report = run_bench(args.runtime, args.decoder, parse_settings(args.set or []), args.baseline, items,
                       progress=not args.json, model=args.model, with_oracle=not args.no_oracle)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{args.runtime}-{args.decoder}-vs-{args.baseline}-{Path(args.workload or 'chat').stem}"
    (out_dir / f"{stem}.json").write_text(json.dumps(report, indent=2))
    write_png(report, out_dir / f"{stem}.png")
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k != "rows"}))
    else:
        print(f"{args.decoder}: {report['a_tokens_per_s']:.1f} tok/s   {args.baseline}: "
              f"{report['b_tokens_per_s']:.1f} tok/s   ratio {report['ratio']:.3f}x   identical "
              f"{100 * report['identical_share']:.0f}% of {report['prompts']} prompts")
        print(f"without the prompt's forward pass: {report['a_decode_tokens_per_s']:.1f} vs "
              f"{report['b_decode_tokens_per_s']:.1f} tok/s = {report['decode_ratio']:.3f}x")
        if "acceptance_rate" in report:
            print(f"acceptance {report['acceptance_rate']:.3f}, tokens per target pass "
                  f"{report.get('tokens_per_target_pass', 0):.2f}")
        if "oracle_ratio" in report:
            print(f"oracle (perfect drafts): {report['oracle_ratio']:.3f}x end to end, "
                  f"{report['oracle_decode_ratio']:.3f}x decoding; ours is {100 * report['oracle_share']:.0f}% of it")
        print(f"wrote {out_dir / stem}.json and .png")
    return 0


def add_subcommand(sub: Any) -> None:
    bench = sub.add_parser("bench", help="a decoder against a baseline, side by side, on a workload")
    bench.add_argument("--runtime", default="llamacpp", help="a registered runtime (llamacpp, hf, vllm, toy, ...)")
    bench.add_argument("--model", help="the runtime's model (default: the embedded model)")
    bench.add_argument("--decoder", default="greedy")
    bench.add_argument("--set", action="append", metavar="KEY=VALUE")
    bench.add_argument("--baseline", default="native-greedy", help=f"a decoder name or one of {', '.join(NATIVE)}")
    bench.add_argument("--workload", help="a .jsonl file or a shipped workload's name (default: chat)")
    bench.add_argument("--limit", type=int, help="use the first N prompts")
    bench.add_argument("--out", default="benchmarks/results", help="folder for the JSON and PNG")
    bench.add_argument("--json", action="store_true")
    bench.add_argument("--no-oracle", action="store_true",
                       help="skip the oracle run (perfect drafts) that speculative decoders are measured against")
    bench.set_defaults(func=cmd_bench)
