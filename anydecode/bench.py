"""``anydecode bench``: a decoder against a baseline, side by side in one process, on a workload.

A and B run alternately on the same prompts (the order flips every prompt, so warm caches favour neither), and
the report gives tokens/s of each and their ratio twice: with the prompt's forward pass (end to end, as a user
sees it) and without it (decoding speed; the prompt's pass is the same work in A and B: ours is timed around
the session's prefill, a native baseline until its first token), the share of identical outputs and the
decoder's statistics, as JSON and as a PNG.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

NATIVE = ("native-greedy", "native-prompt-lookup", "native-assisted")
WORKLOADS = Path(__file__).resolve().parent.parent / "benchmarks" / "workloads"


def load_workload(path: str | None, limit: int | None) -> list[dict[str, Any]]:
    from anydecode.cli import UsageError

    file = Path(path) if path else WORKLOADS / "chat.jsonl"
    if not file.is_file() and (WORKLOADS / f"{path}.jsonl").is_file():
        file = WORKLOADS / f"{path}.jsonl"
    if not file.is_file():
        raise UsageError(f"workload not found: {file}")
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


def llamacpp_runners(decoder: str, settings: dict[str, Any], baseline: str) -> tuple[Runner, Runner, Any]:
    from anydecode.models import default_gguf_path
    from anydecode.plugins.llamacpp import generate, load_default
    from anydecode.plugins.llamacpp.text import prompt_ids

    llm = load_default()

    def ours(name: str, cfg: dict[str, Any]) -> Runner:
        def run(item: dict[str, Any]) -> tuple[list[int], dict[str, Any]]:
            llm.reset()
            out = generate(llm, item["prompt"], decoder=name, max_new_tokens=item["max_new_tokens"],
                           chat=item["chat"], **cfg)
            return out.token_ids, out.stats
        return run

    def native(target: Any) -> Runner:
        temp = float(settings.get("temperature", 0.0))

        def run(item: dict[str, Any]) -> tuple[list[int], dict[str, Any]]:
            target.reset()
            tokens = prompt_ids(target, item["prompt"], chat=item["chat"])
            out: list[int] = []
            started = time.perf_counter()
            prefill = None
            gen = target.generate(tokens, temp=temp, top_k=int(settings.get("top_k", 0)) if temp else 1,
                                  top_p=float(settings.get("top_p", 1.0)), min_p=float(settings.get("min_p", 0.0)),
                                  repeat_penalty=1.0, reset=True)
            for token in gen:
                if prefill is None:  # the prompt's forward pass and the first token's selection
                    prefill = time.perf_counter() - started
                out.append(int(token))
                if token == target.token_eos() or len(out) >= item["max_new_tokens"]:
                    break
            return out, {"prefill_seconds": prefill or 0.0}
        return run

    a = ours(decoder, settings)
    if baseline == "native-greedy":
        b = native(llm)
    elif baseline == "native-prompt-lookup":
        import llama_cpp
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

        lookup = llama_cpp.Llama(model_path=str(default_gguf_path()), n_ctx=llm.n_ctx(), verbose=False,
                                 n_threads=llm.context_params.n_threads,
                                 n_threads_batch=llm.context_params.n_threads_batch,
                                 draft_model=LlamaPromptLookupDecoding(num_pred_tokens=10))
        b = native(lookup)
    elif baseline == "native-assisted":
        from anydecode.cli import UsageError

        raise UsageError("native-assisted is a transformers baseline; llama.cpp has native-prompt-lookup")
    else:
        b = ours(baseline, {k: v for k, v in settings.items() if k in ("temperature", "top_k", "top_p", "seed")})
    return a, b, llm


def hf_runners(decoder: str, settings: dict[str, Any], baseline: str) -> tuple[Runner, Runner, Any]:
    import torch

    from anydecode.plugins import hf

    model, tok = hf.load_default()

    def encode(item: dict[str, Any]) -> Any:
        if item["chat"]:
            return tok.apply_chat_template([{"role": "user", "content": item["prompt"]}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)["input_ids"]
        return tok(item["prompt"], return_tensors="pt").input_ids

    def ours(name: str, cfg: dict[str, Any]) -> Runner:
        def run(item: dict[str, Any]) -> tuple[list[int], dict[str, Any]]:
            ids = encode(item)
            out = model.generate(ids, custom_generate=hf.generate, decoder=name, decoder_config=cfg,
                                 max_new_tokens=item["max_new_tokens"], return_dict_in_generate=True,
                                 anydecode_tokenizer=tok)
            return out.sequences[0, ids.shape[1]:].tolist(), dict(out.anydecode_stats or {})
        return run

    def native(extra: dict[str, Any]) -> Runner:
        sampling = _sampling_kwargs(settings)
        do_sample = float(sampling.get("temperature", 0.0)) > 0

        def run(item: dict[str, Any]) -> tuple[list[int], dict[str, Any]]:
            ids = encode(item)
            clock = _FirstTokenClock()
            with torch.no_grad():
                out = model.generate(ids, max_new_tokens=item["max_new_tokens"], do_sample=do_sample,
                                     streamer=clock, **(sampling if do_sample else {}), **extra)
            return out[0, ids.shape[1]:].tolist(), {"prefill_seconds": clock.prefill_seconds()}
        return run

    a = ours(decoder, settings)
    if baseline == "native-greedy":
        b = native({})
    elif baseline == "native-prompt-lookup":
        b = native({"prompt_lookup_num_tokens": 10})
    elif baseline == "native-assisted":
        b = native({"assistant_model": model})  # the model as its own assistant: an upper bound on acceptance
    else:
        b = ours(baseline, {k: v for k, v in settings.items() if k in ("temperature", "top_k", "top_p", "seed")})
    return a, b, None


class _FirstTokenClock:
    """A transformers streamer that notes when the first new token arrives (its first ``put`` is the prompt)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.puts = 0
        self.first: float | None = None

    def put(self, value: Any) -> None:
        self.puts += 1
        if self.puts == 2 and self.first is None:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass

    def prefill_seconds(self) -> float:
        return 0.0 if self.first is None else self.first - self.started


def _strip_eos(ids: list[int], eos: set[int]) -> list[int]:
    return [t for t in ids if t not in eos]


def run_bench(runtime: str, decoder: str, settings: dict[str, Any], baseline: str, items: list[dict[str, Any]],
              progress: bool = False) -> dict[str, Any]:
    from anydecode.registry import get_decoder

    dec = get_decoder(decoder)
    config = dec.configure(settings, from_strings=True)
    cfg = {k: v for k, v in config.as_dict().items() if k in settings}
    if baseline not in NATIVE:
        get_decoder(baseline)
    a, b, handle = (llamacpp_runners if runtime == "llamacpp" else hf_runners)(decoder, cfg, baseline)
    # warm-up, not timed, on a prompt outside the workload (a drafter that learns across requests, like aded,
    # must not have seen a workload prompt's output before it is timed on it)
    warm = {"prompt": "Say hello.", "chat": items[0]["chat"], "max_new_tokens": 8}
    a(warm)
    b(warm)
    rows = []
    totals = {"a_tokens": 0, "b_tokens": 0, "a_seconds": 0.0, "b_seconds": 0.0, "a_prefill_seconds": 0.0,
              "b_prefill_seconds": 0.0}
    agg: dict[str, float] = {}
    for i, item in enumerate(items):
        order = (("a", a), ("b", b)) if i % 2 == 0 else (("b", b), ("a", a))
        res: dict[str, Any] = {}
        for label, runner in order:
            started = time.perf_counter()
            ids, stats = runner(item)
            res[label] = (ids, time.perf_counter() - started, stats)
        eos = {2}
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
        rows.append({"a_tokens": len(a_ids), "b_tokens": len(b_ids), "a_seconds": a_s, "b_seconds": b_s,
                     "identical": _strip_eos(a_ids, eos) == _strip_eos(b_ids, eos)})
        if progress:
            print(f"\r{i + 1}/{len(items)} prompts", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    if handle is not None:
        handle.close()
    a_tps = totals["a_tokens"] / totals["a_seconds"]
    b_tps = totals["b_tokens"] / totals["b_seconds"]
    # decoding speed without the prompt's forward pass (the same work in A and B), as llama.cpp reports "eval"
    a_dec = totals["a_tokens"] / max(totals["a_seconds"] - totals["a_prefill_seconds"], 1e-9)
    b_dec = totals["b_tokens"] / max(totals["b_seconds"] - totals["b_prefill_seconds"], 1e-9)
    report = {
        "runtime": runtime, "decoder": decoder, "settings": cfg, "baseline": baseline, "prompts": len(items),
        "a_tokens_per_s": a_tps, "b_tokens_per_s": b_tps, "ratio": a_tps / b_tps,
        "a_decode_tokens_per_s": a_dec, "b_decode_tokens_per_s": b_dec, "decode_ratio": a_dec / b_dec,
        "identical_share": sum(r["identical"] for r in rows) / len(rows),
        "decoder_stats": agg, "rows": rows, **totals,
    }
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

    if args.runtime not in ("hf", "llamacpp"):
        raise UsageError(f"unknown runtime {args.runtime!r}; bench runs on hf or llamacpp")
    items = load_workload(args.workload, args.limit)
    if not items:
        raise UsageError("the workload is empty")
    report = run_bench(args.runtime, args.decoder, parse_settings(args.set or []), args.baseline, items,
                       progress=not args.json)
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
        print(f"wrote {out_dir / stem}.json and .png")
    return 0


def add_subcommand(sub: Any) -> None:
    bench = sub.add_parser("bench", help="a decoder against a baseline, side by side, on a workload")
    bench.add_argument("--runtime", default="llamacpp", help="hf or llamacpp")
    bench.add_argument("--decoder", default="greedy")
    bench.add_argument("--set", action="append", metavar="KEY=VALUE")
    bench.add_argument("--baseline", default="native-greedy", help=f"a decoder name or one of {', '.join(NATIVE)}")
    bench.add_argument("--workload", help="a .jsonl file or a name in benchmarks/workloads (default: chat)")
    bench.add_argument("--limit", type=int, help="use the first N prompts")
    bench.add_argument("--out", default="benchmarks/results", help="folder for the JSON and PNG")
    bench.add_argument("--json", action="store_true")
    bench.set_defaults(func=cmd_bench)
