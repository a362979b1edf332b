"""vLLM speculative decoding (issue 6): anydecode's drafters as ``custom_class`` proposers against vLLM's own
``ngram`` method and against no speculation, greedy, offline ``LLM.generate`` on the editing workload.

Each method runs in its own engine, one engine at a time (deleted before the next starts), on the same prompts:
all prompts in one batch, then (``--single``) the first prompts one at a time. The engine without speculation
runs first and again last, so drift of the machine's speed shows. Reported per method: generated tokens/s,
vLLM's acceptance counters, tokens per target pass, and the share of outputs identical to no speculation.

    python benchmarks/vllm_spec_bench.py [--prompts 16] [--single 8] [--k 8] [--methods none,ngram,iad,...]

A method is ``none``, ``ngram``, ``vllm-suffix`` (vLLM's SuffixDecoding proposer; arctic-inference must be
importable, settings as ``vllm-suffix:max_tree_depth=24``) or one of our drafters with optional settings
(``iad:max_match_ngram=5``). ``--workload`` takes a shipped workload's name or a ``.jsonl`` file. Our drafters
start afresh for each measurement (ADED's table learns across requests: it must not see the outputs twice).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any
from anydecode.workloads import FOLDER

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

EXTENSION = "anydecode.plugins.vllm.worker.AnydecodeWorkerExtension"
COUNTERS = {"vllm:spec_decode_num_drafts": "drafts", "vllm:spec_decode_num_draft_tokens": "draft_tokens",
            "vllm:spec_decode_num_accepted_tokens": "accepted"}


WARM = "Say hello."


def load_prompts(path: str, n: int, workload: str = "editing") -> list[tuple[str, int]]:
    from transformers import AutoTokenizer

    file = Path(workload) if workload.endswith(".jsonl") else FOLDER / f"{workload}.jsonl"
    tok = AutoTokenizer.from_pretrained(path)
    out = []
    for line in file.read_text().splitlines()[:n]:
        doc = json.loads(line)
        text = doc["prompt"]
        if doc.get("chat", True):
            text = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                           tokenize=False)
        out.append((text, int(doc.get("max_new_tokens", 128))))
    return out


def parse_method(text: str) -> tuple[str, dict[str, str]]:
    """``iad`` or ``iad:max_match_ngram=5:adaptive=false`` (a drafter and its settings)."""
    name, *pairs = text.split(":")
    return name, dict(pair.split("=", 1) for pair in pairs)


def speculative(method: str, k: int, ngram: tuple[int, int]) -> dict:
    name, settings = parse_method(method)
    if name == "none":
        return {}
    if name == "ngram":
        return {"speculative_config": {"method": "ngram", "num_speculative_tokens": k,
                                       "prompt_lookup_max": ngram[0], "prompt_lookup_min": ngram[1]}}
    if name == "vllm-suffix":  # vLLM's SuffixDecoding proposer (needs arctic-inference importable)
        return {"speculative_config": {"method": "suffix", "num_speculative_tokens": k,
                                       **{f"suffix_decoding_{key}": float(v) if "." in v else int(v)
                                          for key, v in settings.items()}}}
    from anydecode.plugins.vllm import speculative_args

    return {**speculative_args(name, num_speculative_tokens=k, **settings), "worker_extension_cls": EXTENSION}


def reset(llm, method: str) -> None:
    """A fresh drafter for each measurement: ADED's tri-gram table would otherwise have learnt the very outputs
    it is asked to draft (the same prompts run in each mode)."""
    name, settings = parse_method(method)
    if name not in ("none", "ngram", "vllm-suffix"):
        llm.collective_rpc("anydecode_set_drafter", args=(name, settings))


def counters(llm) -> dict:
    out = dict.fromkeys(COUNTERS.values(), 0.0)
    for metric in llm.get_metrics():
        if metric.name in COUNTERS:
            out[COUNTERS[metric.name]] += metric.value
    return out


def measure(llm, prompts: list[tuple[str, int]], one_at_a_time: bool) -> dict:
    from vllm import SamplingParams

    params = [SamplingParams(temperature=0, max_tokens=m) for _, m in prompts]
    texts = [p for p, _ in prompts]
    before = counters(llm)
    started = time.perf_counter()
    if one_at_a_time:
        outputs = [llm.generate([t], [p], use_tqdm=False)[0] for t, p in zip(texts, params)]
    else:
        outputs = llm.generate(texts, params, use_tqdm=False)
    seconds = time.perf_counter() - started
    after = counters(llm)
    spec = {k: after[k] - before[k] for k in after}
    ids = [list(o.outputs[0].token_ids) for o in outputs]
    tokens = sum(map(len, ids))
    return {
        "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
        **spec,
        "acceptance": spec["accepted"] / spec["draft_tokens"] if spec["draft_tokens"] else None,
        # each target pass yields its accepted draft tokens and one more
        "tokens_per_pass": tokens / (tokens - spec["accepted"]) if tokens > spec["accepted"] else None,
        "ids": ids,
    }


def run_method(method: str, path: str, prompts, single: int, args) -> dict:
    from vllm import LLM, SamplingParams

    def engine() -> tuple[Any, float]:
        started = time.perf_counter()
        llm = LLM(model=path, dtype="float32", enforce_eager=True, max_model_len=2048, max_num_seqs=len(prompts),
                  seed=0, disable_log_stats=False, **speculative(method, args.k, (args.ngram_max, args.ngram_min)))
        # warm-up on a prompt outside the workload (a proposer that learns across requests must not see one)
        llm.generate([WARM], SamplingParams(temperature=0, max_tokens=16), use_tqdm=False)
        return llm, time.perf_counter() - started

    result: dict[str, Any] = {"method": method}
    # each mode on a fresh engine: vLLM's suffix proposer keeps every finished request's output (its global tree)
    # and cannot be reset through the API, so on the batch's engine it would have seen the single prompts' outputs
    for mode in ("batch", "single"):
        if mode not in args.modes or (mode == "single" and not single):
            continue
        llm, result["engine_start_s"] = engine()
        try:
            reset(llm, method)
            result[mode] = measure(llm, prompts if mode == "batch" else prompts[:single], mode == "single")
        finally:
            del llm
            gc.collect()
            time.sleep(3)  # let the engine's processes exit before the next one starts
    return result


def commit() -> str:
    """The anydecode commit measured (``+dirty`` with uncommitted changes): the drafters' cores change."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "algorithms", "plugins"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def identical_share(a: list[list[int]], b: list[list[int]]) -> float:
    return sum(x == y for x, y in zip(a, b)) / len(a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--single", type=int, default=8, help="prompts also run one at a time (0: none)")
    parser.add_argument("--k", type=int, default=8, help="num_speculative_tokens of every method")
    parser.add_argument("--ngram-max", type=int, default=3, help="vLLM ngram prompt_lookup_max")
    parser.add_argument("--ngram-min", type=int, default=1, help="vLLM ngram prompt_lookup_min")
    parser.add_argument("--modes", default="batch,single", help="batch and/or single")
    parser.add_argument("--workload", default="editing", help="a shipped workload's name or a .jsonl file")
    parser.add_argument("--methods", default="none,ngram,iad,prompt_lookup,aded,none")
    parser.add_argument("--out", default="benchmarks/results/vllm_spec.json")
    args = parser.parse_args()

    import vllm

    from anydecode.models import ensure_hf_copy

    path = str(ensure_hf_copy())
    prompts = load_prompts(path, args.prompts, args.workload)
    runs = []
    for method in args.methods.split(","):
        print(f"== {method}", flush=True)
        runs.append(run_method(method, path, prompts, args.single, args))
        print({mode: {k: round(v, 3) if isinstance(v, float) else v for k, v in runs[-1][mode].items() if k != "ids"}
               for mode in ("batch", "single") if mode in runs[-1]}, flush=True)

    baselines = [r for r in runs if r["method"] == "none"]
    report = {"workload": args.workload, "prompts": len(prompts), "single": args.single, "k": args.k,
              "ngram": {"prompt_lookup_max": args.ngram_max, "prompt_lookup_min": args.ngram_min},
              "vllm": vllm.__version__, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "commit": commit(), "modes": {}}
    for mode in ("batch", "single"):
        if mode not in runs[0]:
            continue
        ref_ids = baselines[0][mode]["ids"]
        # the no-speculation speed: the mean over its runs (first and last), so drift affects every ratio alike
        ref_tps = sum(b[mode]["tokens_per_s"] for b in baselines) / len(baselines)
        rows = {}
        for r in runs:
            m = r[mode]
            label = r["method"] if r["method"] != "none" else f"none#{baselines.index(r) + 1}"
            rows[label] = {k: v for k, v in m.items() if k != "ids"}
            rows[label]["identical_to_no_spec"] = identical_share(m["ids"], ref_ids)
            rows[label]["vs_no_spec"] = m["tokens_per_s"] / ref_tps
            rows[label]["engine_start_s"] = r["engine_start_s"]
        if "ngram" in rows:
            for label in rows:
                rows[label]["vs_ngram"] = rows[label]["tokens_per_s"] / rows["ngram"]["tokens_per_s"]
        report["modes"][mode] = rows

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    for mode, rows in report["modes"].items():
        print(f"\n{mode}: {report['prompts'] if mode == 'batch' else report['single']} prompts, k={args.k}")
        print(f"{'method':<24}{'tok/s':>8}{'vs none':>9}{'vs ngram':>9}{'accept':>8}{'tok/pass':>9}{'same':>7}")
        for label, row in rows.items():
            acc = f"{row['acceptance']:.2f}" if row["acceptance"] is not None else "-"
            tpp = f"{row['tokens_per_pass']:.2f}" if row["tokens_per_pass"] is not None else "-"
            vs_ngram = f"{row['vs_ngram']:.2f}" if "vs_ngram" in row else "-"
            print(f"{label:<24}{row['tokens_per_s']:>8.1f}{row['vs_no_spec']:>9.2f}{vs_ngram:>9}{acc:>8}{tpp:>9}"
                  f"{row['identical_to_no_spec']:>7.2f}")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
