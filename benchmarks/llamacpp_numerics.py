"""Block forwards against one-token forwards in llama.cpp: how far their logits differ, and which settings change it.

Speculative verification feeds a block of draft tokens in one ``llama_decode``; plain decoding feeds one token per
call. Both should give the same logits at the same position. This script measures what llama.cpp actually gives,
on the embedded model (or ``--model``), for each context setting in a small grid:

* ``n_threads`` (1 or all cores): a thread split changes nothing inside one dot product in ggml's CPU backend, so
  a difference that stays at 1 thread is not a reduction-order effect of threading;
* ``flash_attn`` on or off: a different attention kernel;
* ``type_k``/``type_v`` f16 (the default) or f32: the KV cache's rounding;
* ``n_ubatch=1``: llama.cpp splits every block into one-token micro-batches, so the block runs the one-token path
  (the control: its difference must be zero, and it shows what equality would cost).

For each setting it greedily decodes ``--tokens`` tokens one at a time from each prompt, then re-runs the same
sequence as one block from the prompt's end, and compares the two logits rows at every position: the largest
absolute difference, the share of positions whose argmax differs, and the smallest top-2 gap among positions
whose argmax differs. Timing: one block of ``--block`` tokens against as many one-token steps, median of 5.

    python benchmarks/llamacpp_numerics.py [--model PATH] [--tokens 48] [--block 8] [--workload code_edit --limit 4]
    python benchmarks/llamacpp_numerics.py --cost [--rounds 3]

``--cost`` measures what flash attention costs: two Llamas on the same file, flash attention off and on, decode the
same prompts greedily one token at a time (plain generation) and verify 8-token blocks, alternating A and B every
prompt; it prints tokens per second of each and their ratio.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import time
from typing import Any

import numpy as np

PROMPTS = [
    "Fix the grammar: she go to school every days and forget her book.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "List five countries in Africa and their capitals:",
]


def load(model: str | None, **settings: Any) -> Any:
    from anydecode.plugins.llamacpp.runtime import load_default

    kwargs: dict[str, Any] = {"n_ctx": 2048, "logits_all": True}
    if model:
        kwargs["model_path"] = model
    kwargs.update(settings)
    return load_default(**kwargs)


def eval_logits(llm: Any, prefix: list[int], tokens: list[int], block: bool) -> np.ndarray:
    """Logits after each of ``tokens`` following ``prefix``: one ``eval`` call for the block, or one per token."""
    llm.reset()
    llm.eval(prefix)
    start = llm.n_tokens
    if block:
        llm.eval(tokens)
    else:
        for t in tokens:
            llm.eval([t])
    return np.array(llm.scores[start - 1:start - 1 + len(tokens)], dtype=np.float64)


def greedy(llm: Any, prefix: list[int], n: int) -> list[int]:
    llm.reset()
    llm.eval(prefix)
    out: list[int] = []
    for _ in range(n):
        t = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(t)
        if t == llm.token_eos():
            break
        llm.eval([t])
    return out


def prefixes(llm: Any, workload: str | None, limit: int) -> list[list[int]]:
    """Token ids of the built-in prompts, or of a workload's first ``limit`` prompts (chat template applied)."""
    if workload is None:
        return [llm.tokenize(text.encode(), add_bos=True) for text in PROMPTS]
    from anydecode.bench import load_workload
    from anydecode.cli import runtime_named

    runtime = runtime_named("llamacpp")
    return [runtime.encode(llm, item["prompt"], chat=item["chat"]) for item in load_workload(workload, limit)]


def compare(llm: Any, tokens: int, workload: str | None = None, limit: int = 4) -> dict[str, float]:
    worst = 0.0
    parted = 0
    positions = 0
    gaps: list[float] = []
    for prefix in prefixes(llm, workload, limit):
        seq = greedy(llm, prefix, tokens)
        one = eval_logits(llm, prefix, seq, block=False)
        blk = eval_logits(llm, prefix, seq, block=True)
        worst = max(worst, float(np.abs(one - blk).max()))
        a, b = one.argmax(1), blk.argmax(1)
        positions += len(seq)
        for i in np.nonzero(a != b)[0]:
            parted += 1
            top2 = np.sort(one[i])[-2:]
            gaps.append(float(top2[1] - top2[0]))
    return {"max_abs_diff": worst, "argmax_differs": parted / max(positions, 1), "positions": positions,
            "largest_gap_parted": max(gaps) if gaps else 0.0}


def timing(llm: Any, block: int) -> tuple[float, float]:
    prefix = llm.tokenize(PROMPTS[0].encode(), add_bos=True)
    toks = list(range(1000, 1000 + block))
    one, blk = [], []
    for _ in range(5):
        llm.reset()
        llm.eval(prefix)
        t0 = time.perf_counter()
        llm.eval(toks)
        blk.append(time.perf_counter() - t0)
        llm.reset()
        llm.eval(prefix)
        t0 = time.perf_counter()
        for t in toks:
            llm.eval([t])
        one.append(time.perf_counter() - t0)
    return statistics.median(blk), statistics.median(one)


def cost(model: str | None, tokens: int, block: int, rounds: int) -> None:
    llms = {"off": load(model, flash_attn=False), "on": load(model, flash_attn=True)}
    plain = {k: [0.0, 0] for k in llms}
    blocks = {k: 0.0 for k in llms}
    for r in range(rounds):
        for i, text in enumerate(PROMPTS):
            order = ["off", "on"] if (i + r) % 2 == 0 else ["on", "off"]
            for name in order:
                llm = llms[name]
                prefix = llm.tokenize(text.encode(), add_bos=True)
                t0 = time.perf_counter()
                out = greedy(llm, prefix, tokens)
                plain[name][0] += time.perf_counter() - t0
                plain[name][1] += len(out)
                b, _ = timing(llm, block)
                blocks[name] += b
    rate = {k: plain[k][1] / plain[k][0] for k in llms}
    print(f"plain greedy (prefill included): flash attention off {rate['off']:.1f} tok/s, on {rate['on']:.1f} "
          f"tok/s: on/off {rate['on'] / rate['off']:.3f}x")
    print(f"{block}-token block forward: on/off time {blocks['on'] / blocks['off']:.3f}x")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model")
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--block", type=int, default=8)
    parser.add_argument("--cost", action="store_true", help="time flash attention on against off")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workload", help="compare on a workload's prompts (longer contexts) instead of the built-in"
                        " ones")
    parser.add_argument("--limit", type=int, default=4)
    parser.add_argument("--settings", default=None, help="comma-separated names from the grid (default: all)")
    args = parser.parse_args(argv)
    if args.cost:
        cost(args.model, args.tokens, args.block, args.rounds)
        return
    import llama_cpp

    from anydecode.plugins.llamacpp.runtime import default_threads

    cores = default_threads()
    f32 = int(llama_cpp.GGML_TYPE_F32)
    grid: list[tuple[str, dict[str, Any]]] = [
        ("default", {}),
        ("n_threads=1", {"n_threads": 1, "n_threads_batch": 1}),
        ("flash_attn=on", {"flash_attn": True}),
        ("kv f32", {"type_k": f32, "type_v": f32}),
        ("kv f32, flash_attn=on", {"type_k": f32, "type_v": f32, "flash_attn": True}),
        ("n_ubatch=1 (control)", {"n_ubatch": 1, "n_batch": 512}),
    ]
    print(f"llama-cpp-python {llama_cpp.__version__}, {cores} cores; system info: "
          f"{ctypes.string_at(llama_cpp.llama_print_system_info()).decode().strip()}")
    print(f"{'setting':<24} {'max |diff|':>10} {'argmax differs':>15} {'largest gap parted':>19} "
          f"{'block ms':>9} {'1-token steps ms':>17} {'ratio':>6}")
    wanted = args.settings.split(",") if args.settings else [name for name, _ in grid]
    for name, settings in grid:
        if name not in wanted:
            continue
        llm = load(args.model, **settings)
        res = compare(llm, args.tokens, args.workload, args.limit)
        blk, one = timing(llm, args.block)
        print(f"{name:<24} {res['max_abs_diff']:>10.4f} {100 * res['argmax_differs']:>14.1f}% "
              f"{res['largest_gap_parted']:>19.4f} {1000 * blk:>9.1f} {1000 * one:>17.1f} {blk / one:>6.2f}")
        del llm


if __name__ == "__main__":
    main()
