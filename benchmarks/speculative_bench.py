"""Speculative decoders against a baseline on the embedded model, side by side in one process.

    python benchmarks/speculative_bench.py --runtime hf|llamacpp --decoder iad [--set k=v ...]
        --baseline native-greedy|native-prompt-lookup|greedy|NAME [--workload benchmarks/workloads/editing.jsonl]
        [--limit 8] [--threads 2] [--json]

Each prompt (a workload line ``{"prompt": ..., "chat": bool, "max_new_tokens": N}``) runs A then B, alternately,
after one warm-up of each; tokens per second are total generated tokens over total decode time (prefill included,
as a user sees it). Prints tokens/s of each, the ratio A/B, the share of prompts with identical outputs and the
acceptance statistics, and writes ``benchmarks/results/speculative_<runtime>_<decoder>_vs_<baseline>.json`` and
a PNG of per-prompt tokens/s.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def parse_settings(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        out[key.strip()] = value.strip()
    return out


class HFRunner:
    """transformers: anydecode decoders through custom_generate, native greedy and prompt lookup."""

    def __init__(self, threads: int):
        import torch

        from anydecode.models import load_hf

        torch.set_num_threads(threads)
        self.torch = torch
        self.model, self.tokenizer = load_hf()

    def encode(self, prompt: str, chat: bool):
        if chat:
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                      add_generation_prompt=True, tokenize=False)
        else:
            text = prompt
        return self.tokenizer(text, return_tensors="pt")

    def run(self, name: str, settings: dict, prompt: str, chat: bool, max_new: int) -> tuple[list[int], dict]:
        import anydecode.plugins.hf as H

        enc = self.encode(prompt, chat)
        width = enc["input_ids"].shape[1]
        if name == "native-greedy":
            out = self.model.generate(**enc, max_new_tokens=max_new, do_sample=False)
            return out[0, width:].tolist(), {}
        if name == "native-prompt-lookup":
            out = self.model.generate(**enc, max_new_tokens=max_new, do_sample=False, prompt_lookup_num_tokens=10)
            return out[0, width:].tolist(), {}
        out = self.model.generate(**enc, custom_generate=H.generate, decoder=name, max_new_tokens=max_new,
                                  return_dict_in_generate=True, anydecode_tokenizer=self.tokenizer,
                                  decoder_config=settings)
        return out.sequences[0, width:].tolist(), dict(out.anydecode_stats or {})


class LlamaRunner:
    """llama.cpp: anydecode decoders through ``generate``, plain generation and LlamaPromptLookupDecoding."""

    def __init__(self, threads: int):
        import anydecode.plugins.llamacpp as L

        self.L = L
        self.llm = L.load_default(n_ctx=4096, n_threads=threads, n_threads_batch=threads)
        self.threads = threads
        self._lookup = None

    def _native(self, llm, ids: list[int], max_new: int) -> list[int]:
        llm.reset()
        out = []
        for token in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
            out.append(int(token))
            if token == llm.token_eos() or len(out) == max_new:
                break
        return out

    def run(self, name: str, settings: dict, prompt: str, chat: bool, max_new: int) -> tuple[list[int], dict]:
        from anydecode.plugins.llamacpp.text import prompt_ids

        ids = prompt_ids(self.llm, prompt, chat=chat)
        # every run prefills its prompt: without this the second run on a prompt would find it cached
        self.llm.reset()
        if self._lookup is not None:
            self._lookup.reset()
        if name == "native-greedy":
            return self._native(self.llm, ids, max_new), {}
        if name == "native-prompt-lookup":
            if self._lookup is None:
                from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

                self._lookup = self.L.load_default(n_ctx=4096, n_threads=self.threads, n_threads_batch=self.threads,
                                                   draft_model=LlamaPromptLookupDecoding(num_pred_tokens=10))
            return self._native(self._lookup, ids, max_new), {}
        out = self.L.generate(self.llm, ids, decoder=name, max_new_tokens=max_new, **settings)
        return list(out.token_ids), dict(out.stats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runtime", choices=("hf", "llamacpp"), default="llamacpp")
    ap.add_argument("--decoder", default="iad")
    ap.add_argument("--set", action="append", default=[], help="decoder setting k=v")
    ap.add_argument("--baseline", default="native-greedy")
    ap.add_argument("--workload", default=str(HERE / "workloads" / "editing.jsonl"))
    ap.add_argument("--limit", type=int, default=8, help="prompts used (from the top of the workload)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="print the JSON result only")
    args = ap.parse_args()

    lines = [json.loads(x) for x in Path(args.workload).read_text().splitlines() if x.strip()][: args.limit]
    runner = HFRunner(args.threads) if args.runtime == "hf" else LlamaRunner(args.threads)
    settings = parse_settings(args.set)
    a_name, b_name = args.decoder, args.baseline
    first = lines[0]
    for name in (a_name, b_name):  # warm-up
        runner.run(name, settings, first["prompt"], first.get("chat", True), 8)
    rows = []
    for line in lines:
        prompt, chat, max_new = line["prompt"], bool(line.get("chat", True)), int(line.get("max_new_tokens", 128))
        row: dict[str, Any] = {}
        for label, name in (("a", a_name), ("b", b_name)):
            started = time.perf_counter()
            tokens, stats = runner.run(name, settings, prompt, chat, max_new)
            row[label] = {"seconds": time.perf_counter() - started, "tokens": len(tokens), "ids": tokens,
                          "stats": {k: v for k, v in stats.items() if isinstance(v, (int, float))}}
        row["identical"] = row["a"]["ids"] == row["b"]["ids"]
        rows.append(row)
        if not args.json:
            print(f"{row['a']['tokens'] / row['a']['seconds']:7.1f} tok/s vs {row['b']['tokens'] / row['b']['seconds']:7.1f}"
                  f"  identical={row['identical']}  accepted/drafted="
                  f"{row['a']['stats'].get('accepted', '-')}/{row['a']['stats'].get('drafted', '-')}", flush=True)

    def rate(label: str) -> float:
        return sum(r[label]["tokens"] for r in rows) / sum(r[label]["seconds"] for r in rows)

    drafted = sum(r["a"]["stats"].get("drafted", 0) for r in rows)
    accepted = sum(r["a"]["stats"].get("accepted", 0) for r in rows)
    forwards = sum(r["a"]["stats"].get("forward_passes", 0) for r in rows)
    result = {
        "runtime": args.runtime, "decoder": a_name, "settings": settings, "baseline": b_name,
        "workload": Path(args.workload).name, "prompts": len(rows), "threads": args.threads,
        "tokens_per_second": {a_name: rate("a"), b_name: rate("b")},
        "ratio": rate("a") / rate("b"),
        "identical_share": sum(r["identical"] for r in rows) / len(rows),
        "acceptance_rate": accepted / drafted if drafted else None,
        "tokens_per_target_forward": sum(r["a"]["tokens"] for r in rows) / forwards if forwards else None,
        "per_prompt": [{"a_tps": r["a"]["tokens"] / r["a"]["seconds"], "b_tps": r["b"]["tokens"] / r["b"]["seconds"],
                        "identical": r["identical"], "a_stats": r["a"]["stats"]} for r in rows],
    }
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    stem = f"speculative_{args.runtime}_{a_name}_vs_{b_name}_{Path(args.workload).stem}"
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.5))
        xs = range(len(rows))
        ax.bar([x - 0.2 for x in xs], [p["a_tps"] for p in result["per_prompt"]], width=0.4, label=a_name)
        ax.bar([x + 0.2 for x in xs], [p["b_tps"] for p in result["per_prompt"]], width=0.4, label=b_name)
        ax.set_xlabel("prompt")
        ax.set_ylabel("tokens/s")
        ax.set_title(f"{args.runtime}: {a_name} / {b_name} = {result['ratio']:.2f}x")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / f"{stem}.png", dpi=100)
    except ImportError:
        pass
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "per_prompt"}))
    else:
        print(f"{a_name}: {rate('a'):.1f} tok/s   {b_name}: {rate('b'):.1f} tok/s   ratio {result['ratio']:.2f}x   "
              f"identical {result['identical_share']:.0%}   acceptance {result['acceptance_rate']}   "
              f"tokens/forward {result['tokens_per_target_forward']}")


if __name__ == "__main__":
    main()
