"""Grammar decoding overhead on the embedded model (49,152-token vocabulary), side by side.

    python benchmarks/grammar_overhead.py [--samples 6] [--rounds 3] [--memory-samples 60]

1. **Per-token cost of mask + reweight** (the transform alone). Token paths come from real GCD samples; the
   model's logits along each path come from one llama.cpp forward pass. Each decoder's transform is replayed
   along the same paths with the same logits, alternating decoders round by round: ``sample`` (unconstrained:
   warpers only), ``gcd`` and ``asap`` with each engine. ASAp learns across the replays, as it does in use.
2. **End-to-end decoding** with llama.cpp: seconds per generated token of ``sample``, ``gcd`` and ``asap`` (same
   prompts and seeds, decoders alternating), so the ratio ASAp/GCD is measured side by side.
3. **ASAp trie memory**: nodes and bytes after ``--memory-samples`` samples, scaled to 1,000 samples.

Writes ``benchmarks/results/grammar_overhead.json`` and prints a table. Figures depend on the machine's load:
quote the ratios and differences, which are measured side by side.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

SCHEMA = json.dumps({
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 16}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
})
LARK = 'start: item ("," item)? ("," item)? "."\nitem: " "? COLOUR\nCOLOUR: "red" | "green" | "blue" | "yellow"'
TASKS = [
    ("json_schema", SCHEMA, "Describe a person as JSON.", ["llguidance", "outlines"]),
    ("lark", LARK, "List some colours.", ["llguidance"]),
]
CHAT = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"


def record_paths(llm, grammar: str, fmt: str, prompt: str, samples: int):
    """(prompt ids, generated ids, logits at each step) of real GCD samples."""
    import torch

    import anydecode.plugins.llamacpp as lc
    from anydecode.plugins.llamacpp.session import LlamaSession

    paths = []
    for seed in range(samples):
        out = lc.generate(llm, CHAT.format(prompt), decoder="gcd", grammar=grammar, grammar_format=fmt,
                          max_new_tokens=60, seed=seed)
        session = LlamaSession(llm)
        first = session.start(out.prompt_token_ids[0])
        rest = session.append(torch.tensor([out.token_ids[:-1]])) if len(out.token_ids) > 1 else None
        steps = [first[0]] + ([rest[0, i] for i in range(rest.shape[1])] if rest is not None else [])
        paths.append((out.prompt_token_ids[0], out.token_ids, [s.float().clone() for s in steps]))
    return paths


class ReferenceLoopAsap:
    """The reference code's reweighting, for comparison: a Python loop over the allowed tokens at each step
    (children inserted one by one with ``.item()`` reads, as transformers-GAD does), over the same llguidance
    masks. Same outputs as the ``asap`` transform for a fresh trie; only the cost differs."""

    def __init__(self, compiled):
        self.compiled = compiled
        self.children: dict = {}

    def start(self, prompt_ids):
        return {"matcher": self.compiled.matcher(), "prefix": ()}

    def apply(self, state, generated_ids, logits):
        import torch

        for token in list(generated_ids)[len(state["prefix"]):]:
            state["matcher"].consume(token)
        state["prefix"] = tuple(generated_ids)
        allowed = state["matcher"].allowed_tokens()
        probs = torch.softmax(logits, dim=-1)
        node = self.children.setdefault(state["prefix"], {})
        out = torch.full_like(logits, float("-inf"))
        for idx in torch.nonzero(allowed).flatten().tolist():  # the per-token loop of the reference code
            p = probs[idx].item()
            efg = node.setdefault(idx, [p, 1.0])[1]
            out[idx] = math.log(p) + math.log(efg) if p > 0 and efg > 0 else float("-inf")
        return out

    def finish(self, state, generated_ids, reason):
        return None


def time_transforms(llm, paths, grammar, fmt, engines, rounds, reference_loop=False):
    """Median and mean microseconds per apply() of each decoder's transform along the recorded paths."""
    from anydecode.algorithms.contracts.decoder import TransformContext
    from anydecode.algorithms.grammar import forget_asap_state
    from anydecode.plugins.llamacpp.text import LlamaTokenizer
    from anydecode.registry import get_decoder

    forget_asap_state()
    ctx = TransformContext(vocab_size=int(llm.n_vocab()), eos_token_ids=frozenset({int(llm.token_eos())}),
                           tokenizer=LlamaTokenizer(llm), runtime="llamacpp")
    variants = [("sample", None)] + [(d, e) for e in engines for d in ("gcd", "asap")]
    transforms = {}
    for name, engine in variants:
        dec = get_decoder(name)
        settings = {} if engine is None else {"grammar": grammar, "grammar_format": fmt, "engine": engine}
        transforms[(name, engine)] = dec.transform(dec.configure(settings), ctx)
    if reference_loop:
        variants.append(("asap-reference-loop", "llguidance"))
        transforms[variants[-1]] = ReferenceLoopAsap(transforms[("asap", "llguidance")].compiled)
    times: dict = {v: [] for v in variants}
    for _round in range(rounds):
        for variant in variants:  # decoders alternate, so load changes hit all of them alike
            transform = transforms[variant]
            for prompt_ids, generated, steps in paths:
                state = transform.start(prompt_ids)
                for i, logits in enumerate(steps):
                    started = time.perf_counter()
                    transform.apply(state, generated[:i], logits)
                    times[variant].append(time.perf_counter() - started)
                transform.finish(state, generated, "stop")
    out = {}
    for (name, engine), ts in times.items():
        key = name if engine is None else f"{name}+{engine}"
        out[key] = {"median_us": statistics.median(ts) * 1e6, "mean_us": statistics.fmean(ts) * 1e6,
                    "steps": len(ts)}
    return out


def time_end_to_end(llm, grammar, fmt, prompt, engine, samples):
    """Median seconds per generated token of sample, gcd and asap, alternating, same prompts and seeds."""
    import anydecode.plugins.llamacpp as lc
    from anydecode.algorithms.grammar import forget_asap_state

    forget_asap_state()
    per_token: dict[str, list[float]] = {"sample": [], "gcd": [], "asap": []}
    lengths: dict[str, list[int]] = {k: [] for k in per_token}
    for seed in range(samples):
        for name in per_token:
            settings = {} if name == "sample" else {"grammar": grammar, "grammar_format": fmt, "engine": engine}
            out = lc.generate(llm, CHAT.format(prompt), decoder=name, max_new_tokens=40, seed=seed, **settings)
            n = max(1, out.stats["new_tokens"])
            per_token[name].append(out.stats["decode_seconds"] / n)
            lengths[name].append(n)
    med = {k: statistics.median(v) for k, v in per_token.items()}
    return {
        "ms_per_token": {k: v * 1e3 for k, v in med.items()},
        "asap_minus_sample_ms": (med["asap"] - med["sample"]) * 1e3,
        "asap_over_gcd_throughput": med["gcd"] / med["asap"],
        "mean_tokens": {k: statistics.fmean(v) for k, v in lengths.items()},
    }


def trie_memory(llm, grammar, fmt, prompt, samples):
    import anydecode.plugins.llamacpp as lc
    from anydecode.algorithms.contracts.decoder import TransformContext
    from anydecode.algorithms.grammar import forget_asap_state
    from anydecode.plugins.llamacpp.text import LlamaTokenizer
    from anydecode.registry import get_decoder

    forget_asap_state()
    tokens = 0
    for seed in range(samples):
        out = lc.generate(llm, CHAT.format(prompt), decoder="asap", grammar=grammar, grammar_format=fmt,
                          max_new_tokens=60, seed=1000 + seed)
        tokens += len(out.token_ids)
    dec = get_decoder("asap")
    ctx = TransformContext(vocab_size=int(llm.n_vocab()), eos_token_ids=frozenset({int(llm.token_eos())}),
                           tokenizer=LlamaTokenizer(llm))
    transform = dec.transform(dec.configure({"grammar": grammar, "grammar_format": fmt}), ctx)
    trie = transform.trie(out.prompt_token_ids[0])
    stats = trie.stats()
    return {"samples": samples, "tokens": tokens, "nodes": stats["nodes"], "bytes": stats["memory_bytes"],
            "bytes_per_1000_samples": stats["memory_bytes"] / samples * 1000,
            "nodes_per_1000_samples": stats["nodes"] / samples * 1000, "root_efg": stats["root_efg"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=6, help="recorded paths per grammar / end-to-end samples")
    parser.add_argument("--rounds", type=int, default=3, help="replays of the recorded paths per decoder")
    parser.add_argument("--memory-samples", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only-transform", action="store_true", help="skip the end-to-end and memory parts")
    parser.add_argument("--reference-loop", action="store_true",
                        help="also time the reference code's per-token Python loop (slow)")
    parser.add_argument("--out", default=str(HERE / "results" / "grammar_overhead.json"))
    args = parser.parse_args()

    import anydecode.plugins.llamacpp as lc

    llm = lc.load_default(n_threads=args.threads)
    import os

    results: dict = {"vocab_size": int(llm.n_vocab()), "transform": {}, "end_to_end": {}, "memory": {},
                     "load_average_start": os.getloadavg()}
    for fmt, grammar, prompt, engines in TASKS:
        paths = record_paths(llm, grammar, fmt, prompt, args.samples)
        results["transform"][fmt] = time_transforms(llm, paths, grammar, fmt, engines, args.rounds,
                                                    args.reference_loop)
        if not args.only_transform:
            results["end_to_end"][fmt] = time_end_to_end(llm, grammar, fmt, prompt, "llguidance", args.samples)
    if not args.only_transform:
        fmt, grammar, prompt, _ = TASKS[0]
        results["memory"][fmt] = trie_memory(llm, grammar, fmt, prompt, args.memory_samples)

    results["load_average_end"] = os.getloadavg()
    for fmt, table in results["transform"].items():
        if fmt not in results["end_to_end"]:
            continue
        # what the transform costs add to the model's own per-token time, measured with `sample`
        model_ms = results["end_to_end"][fmt]["ms_per_token"]["sample"]
        gcd, asap = table["gcd+llguidance"]["median_us"] / 1e3, table["asap+llguidance"]["median_us"] / 1e3
        results["end_to_end"][fmt]["projected_asap_over_gcd_throughput"] = (model_ms + gcd) / (model_ms + asap)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"vocabulary {results['vocab_size']} tokens")
    for fmt, table in results["transform"].items():
        base = table["sample"]["median_us"]
        for key, row in table.items():
            print(f"  transform {fmt:12s} {key:20s} median {row['median_us']:8.1f} us/token "
                  f"(+{row['median_us'] - base:7.1f} over sample)")
    for fmt, row in results["end_to_end"].items():
        ms = row["ms_per_token"]
        print(f"  end-to-end {fmt:12s} sample {ms['sample']:.2f} gcd {ms['gcd']:.2f} asap {ms['asap']:.2f} ms/token;"
              f" asap-sample {row['asap_minus_sample_ms']:+.2f} ms; asap/gcd throughput "
              f"{row['asap_over_gcd_throughput']:.2f}x measured, "
              f"{row['projected_asap_over_gcd_throughput']:.3f}x from the transform costs")
    for fmt, row in results["memory"].items():
        print(f"  ASAp trie ({fmt}): {row['nodes']} nodes, {row['bytes'] / 1024:.0f} KiB after {row['samples']} "
              f"samples -> {row['bytes_per_1000_samples'] / 2**20:.2f} MiB per 1,000 samples")
    print(f"load average {results['load_average_start']} -> {results['load_average_end']}; wrote {args.out}")


if __name__ == "__main__":
    main()
