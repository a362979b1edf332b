"""The speculative table: every drafter against one runtime's plain decoding, greedy and sampling, on several
workloads, with the oracle (perfect drafts) and the copy oracle (perfect drafts cut to what occurs in the context:
the bound of drafters that copy from the prompt and output) measured in the same run.

For each workload and mode, every prompt runs the baseline (the runtime's own loop), each speculative decoder and
the oracle once, in an order rotated per prompt so that warm caches favour none. One model is loaded per runtime.
Ratios are A's tokens per second over the baseline's, end to end and while decoding (prompt pass left out).

    python benchmarks/spec_table.py --runtime hf --workloads editing,chat --limit 4
    python benchmarks/spec_table.py --runtime llamacpp --baselines native-greedy-default,native-greedy \\
        --identity native-greedy

The oracle's recording under greedy is the first decoder's output (lossless decoders all produce the handle's greedy
output; the identical share says whether they did); under sampling it is what the speculative loop samples with
the same seed when it drafts nothing (``anydecode.bench.recorded_continuation``), recorded untimed: deterministic
drafts are verified by coupling, so every drafter's output is that one, and the oracle's drafts are accepted whole.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from anydecode.bench import load_workload, runners

Runner = Callable[[dict[str, Any]], tuple[list[int], dict[str, Any]]]
SAMPLING = {"temperature": 0.7}


def _oracle(runtime: Any, handle: Any, sampling: dict[str, Any]) -> Callable[[dict[str, Any], list[int]], tuple]:
    """Runs the oracle on one prompt: ``(its tokens, stats, seconds, the recording it drafted)``."""
    from anydecode.algorithms.generation import generate_on
    from anydecode.bench import recorded_continuation
    from anydecode.registry import get_decoder

    spec = get_decoder("speculative")

    def run(item: dict[str, Any], greedy_output: list[int], copy_only: bool = False,
            recorded: list[int] | None = None) -> tuple[list[int], dict[str, Any], float]:
        ids = runtime.encode(handle, item["prompt"], chat=item["chat"])
        if recorded is None:
            recorded = greedy_output
            if sampling:
                recorded = recorded_continuation(runtime, handle, ids, sampling, item["max_new_tokens"])
        config = spec.configure({**sampling, "drafter": "oracle", "continuation_ids": tuple(recorded),
                                 "copy_only": copy_only})
        runtime.reset(handle)
        started = time.perf_counter()
        out = generate_on(runtime, handle, [ids], spec, config, max_new_tokens=item["max_new_tokens"])
        return out.token_ids, out.stats, time.perf_counter() - started, recorded
    return run


def _strip(ids: list[int], eos: set[int]) -> list[int]:
    return [t for t in ids if t not in eos]


def measure(runtime: Any, handle: Any, decoders: list[str], baselines: list[str], identity: str,
            items: list[dict[str, Any]], sampling: dict[str, Any], seed: int) -> dict[str, Any]:
    from anydecode.algorithms.speculative import decoders as learnt

    # every cell starts with nothing learnt: ADED's tables and the suffix corpus otherwise carry what an earlier
    # cell saw (the same prompts under the other mode); within a cell they learn across prompts as deployed
    learnt._ADED_TABLES.clear()
    learnt._SUFFIX_CORPORA.clear()
    eos_id = runtime.tokenizer(handle).eos_token_id
    eos = {eos_id} if eos_id is not None else set()
    settings = {**sampling, "seed": seed} if sampling else {}
    oracle = _oracle(runtime, handle, settings)
    run_of: dict[str, Runner] = {}
    for base in baselines:
        for name in decoders:
            run_of[name], run_of[base] = runners(runtime, handle, name, settings, base)
    timed = baselines + decoders
    if identity not in run_of:  # the reference for identity, untimed (same attention as the decoders)
        _, run_of[identity] = runners(runtime, handle, decoders[0], settings, identity)
    names = timed + ["oracle", "copy_oracle"]
    tot = {n: {"tokens": 0, "seconds": 0.0, "prefill": 0.0, "drafted": 0, "accepted": 0, "passes": 0,
               "identical": 0} for n in names}
    warm = {"prompt": "Say hello.", "chat": items[0]["chat"], "max_new_tokens": 8}
    for name in timed:
        run_of[name](warm)
    for i, item in enumerate(items):
        shift = i % len(timed)
        outs: dict[str, list[int]] = {}
        for name in timed[shift:] + timed[:shift]:
            started = time.perf_counter()
            ids, stats = run_of[name](item)
            seconds = time.perf_counter() - started
            _add(tot[name], ids, stats, seconds)
            outs[name] = ids
        if identity not in outs:
            outs[identity] = run_of[identity](item)[0]
        # the oracle runs last: it drafts the first decoder's output (greedy) or records the loop's draw itself
        ids, stats, seconds, recorded = oracle(item, outs[decoders[0]])
        _add(tot["oracle"], ids, stats, seconds)
        outs["oracle"] = ids
        # the bound of copying drafters: the recording's tokens drafted only as far as they occur in the context
        ids, stats, seconds, _ = oracle(item, outs[decoders[0]], copy_only=True, recorded=recorded)
        _add(tot["copy_oracle"], ids, stats, seconds)
        outs["copy_oracle"] = ids
        # under sampling the reference is the loop's own draw without drafts: every drafter must reproduce it
        reference = recorded if sampling else outs[identity]
        for name in decoders + ["oracle", "copy_oracle"]:
            tot[name]["identical"] += _strip(outs[name], eos) == _strip(reference, eos)
        print(f"\r  {i + 1}/{len(items)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return _summarise(tot, decoders, baselines, len(items))


def _add(t: dict[str, Any], ids: list[int], stats: dict[str, Any], seconds: float) -> None:
    t["tokens"] += len(ids)
    t["seconds"] += seconds
    t["prefill"] += float(stats.get("prefill_seconds", 0.0))
    t["drafted"] += int(stats.get("drafted", 0) or 0)
    t["accepted"] += int(stats.get("accepted", 0) or 0)
    t["passes"] += int(stats.get("target_forward_passes", 0) or 0)


def _summarise(tot: dict[str, dict[str, Any]], decoders: list[str], baselines: list[str],
               prompts: int) -> dict[str, Any]:
    def tps(t: dict[str, Any]) -> float:
        return t["tokens"] / max(t["seconds"], 1e-9)

    def dec(t: dict[str, Any]) -> float:
        return t["tokens"] / max(t["seconds"] - t["prefill"], 1e-9)

    b = tot[baselines[0]]
    oracle_ratio = tps(tot["oracle"]) / tps(b)
    rows = {}
    for name in decoders + ["oracle", "copy_oracle"]:
        t = tot[name]
        ratio = tps(t) / tps(b)
        rows[name] = {
            "ratio": ratio, "decode_ratio": dec(t) / dec(b), "tokens_per_s": tps(t),
            "vs": {base: tps(t) / tps(tot[base]) for base in baselines},
            "oracle_ratio": oracle_ratio, "oracle_share": ratio / oracle_ratio,
            "identical_share": t["identical"] / prompts,
            "acceptance": t["accepted"] / t["drafted"] if t["drafted"] else None,
            "tokens_per_pass": t["tokens"] / t["passes"] if t["passes"] else None,
        }
    return {"prompts": prompts, "rows": rows, "totals": tot}


def main() -> int:
    from anydecode.cli import runtime_named
    from anydecode.registry import get_decoder

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runtime", default="hf")
    p.add_argument("--model", default=None)
    p.add_argument("--workloads", default="editing,editing2,code_edit,chat")
    p.add_argument("--decoders", default="iad,suffix,aded,prompt_lookup")
    p.add_argument("--modes", default="greedy,sample", help="greedy and/or sample (temperature 0.7)")
    p.add_argument("--baselines", default="native-greedy",
                   help="comma-separated; ratios are against the first, and against each in 'vs'")
    p.add_argument("--identity", default=None, help="the baseline outputs are compared with (default: the first)")
    p.add_argument("--limit", type=int, default=4)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--out", default="benchmarks/results/spec_table.json")
    args = p.parse_args()

    decoders = args.decoders.split(",")
    baselines = args.baselines.split(",")
    runtime = runtime_named(args.runtime)
    handle = runtime.load_for(args.model, [get_decoder(d) for d in decoders])
    results: list[dict[str, Any]] = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        for workload in args.workloads.split(","):
            items = load_workload(workload, args.limit)
            for mode in args.modes.split(","):
                sampling = dict(SAMPLING) if mode == "sample" else {}
                print(f"{args.runtime} {workload} {mode}", file=sys.stderr)
                started = time.perf_counter()
                res = measure(runtime, handle, decoders, baselines, args.identity or baselines[0], items, sampling,
                              args.seed)
                res.update({"runtime": args.runtime, "workload": workload, "mode": mode, "baselines": baselines,
                            "wall_seconds": time.perf_counter() - started})
                results.append(res)
                for name, r in res["rows"].items():
                    print(_line(args.runtime, workload, mode, name, r), flush=True)
                out.write_text(json.dumps(results, indent=1))
    finally:
        runtime.close(handle)
    return 0


def _line(runtime: str, workload: str, mode: str, name: str, r: dict[str, Any]) -> str:
    def f(x: Any, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)
    return (f"| {runtime} | {workload} | {mode} | {name} | {r['ratio']:.2f}x | {r['decode_ratio']:.2f}x | "
            f"{r['oracle_ratio']:.2f}x | {r['oracle_share']:.0%} | {r['identical_share']:.0%} | "
            f"{f(r['acceptance'], '.2f')} | {f(r['tokens_per_pass'], '.2f')} | "
            + " ".join(f"{k}: {v:.2f}x" for k, v in r["vs"].items()) + " |")


if __name__ == "__main__":
    sys.exit(main())
