"""vLLM side-by-side benchmarks (issue 6): the processor's cost for plain requests, grammar decoders against
vLLM's own structured outputs, and search over the engine against ``LLM.beam_search``.

Two engines live in this process, one with anydecode's logits processor and one without; every measurement runs
A and B alternately on the same prompts, several rounds, and reports the ratio of total throughputs.

    python benchmarks/vllm_bench.py [--rounds 3] [--requests 32] [--out benchmarks/results/vllm.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORKLOADS = Path(__file__).resolve().parent / "workloads"
SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                           "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}


def prompts(n: int) -> list[str]:
    lines = (WORKLOADS / "chat.jsonl").read_text().splitlines()
    return [json.loads(line)["prompt"] for line in lines[:n]]


def timed(fn):
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def tokens_of(outputs) -> int:
    return sum(len(o.outputs[0].token_ids) for o in outputs)


def alternate(rounds: int, a, b) -> dict:
    totals = {"a_tokens": 0, "b_tokens": 0, "a_seconds": 0.0, "b_seconds": 0.0}
    for r in range(rounds):
        order = (("a", a), ("b", b)) if r % 2 == 0 else (("b", b), ("a", a))
        for label, fn in order:
            n, secs = fn()
            totals[f"{label}_tokens"] += n
            totals[f"{label}_seconds"] += secs
    a_tps = totals["a_tokens"] / totals["a_seconds"]
    b_tps = totals["b_tokens"] / totals["b_seconds"]
    return {**totals, "a_tokens_per_s": a_tps, "b_tokens_per_s": b_tps, "ratio": a_tps / b_tps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--out", default="benchmarks/results/vllm.json")
    args = parser.parse_args()

    from vllm import LLM, SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    from anydecode.models import ensure_hf_copy
    from anydecode.plugins.vllm import AnydecodeLogitsProcessor, generate

    path = str(ensure_hf_copy())
    common = dict(model=path, dtype="float32", enforce_eager=True, max_model_len=1024, max_num_seqs=32, seed=0)
    with_proc = LLM(logits_processors=[AnydecodeLogitsProcessor], **common)
    plain = LLM(**common)
    ps = prompts(args.requests)
    report = {"requests": len(ps), "max_tokens": args.max_tokens, "rounds": args.rounds}

    greedy = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
    report["plain_requests_processor_installed_vs_not"] = alternate(
        args.rounds,
        lambda: (lambda o: (tokens_of(o[0]), o[1]))(timed(lambda: with_proc.generate(ps, greedy, use_tqdm=False))),
        lambda: (lambda o: (tokens_of(o[0]), o[1]))(timed(lambda: plain.generate(ps, greedy, use_tqdm=False))),
    )

    schema = json.dumps(SCHEMA)
    json_prompts = [f"Reply in JSON with a name and an age for: {p[:80]}" for p in ps[:16]]
    ours = {name: SamplingParams(temperature=1.0, seed=1, max_tokens=64,
                                 extra_args={"decoder": name, "grammar": schema, "grammar_format": "json_schema"})
            for name in ("gcd", "asap")}
    native = SamplingParams(temperature=1.0, seed=1, max_tokens=64,
                            structured_outputs=StructuredOutputsParams(json=SCHEMA))
    for name, params in ours.items():
        report[f"{name}_vs_vllm_structured_outputs"] = alternate(
            args.rounds,
            lambda p=params: (lambda o: (tokens_of(o[0]), o[1]))(
                timed(lambda: with_proc.generate(json_prompts, p, use_tqdm=False))),
            lambda: (lambda o: (tokens_of(o[0]), o[1]))(
                timed(lambda: with_proc.generate(json_prompts, native, use_tqdm=False))),
        )

    from vllm.sampling_params import BeamSearchParams

    beam_prompts = ps[:4]

    def ours_dbs():
        outs, secs = timed(lambda: generate(plain, beam_prompts, decoder="beam", num_beams=4, max_new_tokens=24))
        return sum(len(g.sequences[0].token_ids) for g in outs), secs

    def native_beam():
        outs, secs = timed(lambda: plain.beam_search([{"prompt": p} for p in beam_prompts],
                                                     BeamSearchParams(beam_width=4, max_tokens=24)))
        return sum(len(o.sequences[0].tokens) - len(plain.get_tokenizer().encode(p))
                   for o, p in zip(outs, beam_prompts)), secs

    report["beam_over_engine_vs_llm_beam_search"] = alternate(args.rounds, ours_dbs, native_beam)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    for key, value in report.items():
        if isinstance(value, dict):
            print(f"{key}: ratio {value['ratio']:.3f}  ({value['a_tokens_per_s']:.1f} vs "
                  f"{value['b_tokens_per_s']:.1f} tok/s)")


if __name__ == "__main__":
    main()
