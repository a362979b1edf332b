"""vLLM side-by-side benchmarks (issue 6): the processor's cost for plain requests, grammar decoders against
vLLM's own structured outputs, and diverse beam search over the engine against ``LLM.beam_search``.

One engine at a time (two engines on a 2-core machine fight over the cores and distort each other): the plain
engine (no processor) runs first and again last, the engine with anydecode's processor in between, so drift shows
as a difference between the two plain runs; the processor's ratio is against their mean. Grammar decoders and
vLLM's structured outputs alternate on the processor engine; ``dbs`` and ``LLM.beam_search`` (same total beams)
alternate on the plain engine.

    python benchmarks/vllm_bench.py [--rounds 3] [--requests 32] [--out benchmarks/results/vllm.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
from pathlib import Path
from anydecode.workloads import FOLDER

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORKLOADS = FOLDER
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


def make_engine(path: str, processor: bool):
    from vllm import LLM

    from anydecode.plugins.vllm import AnydecodeLogitsProcessor

    extra = {"logits_processors": [AnydecodeLogitsProcessor]} if processor else {}
    return LLM(model=path, dtype="float32", enforce_eager=True, max_model_len=1024, max_num_seqs=32, seed=0, **extra)


def close(llm) -> None:
    del llm
    gc.collect()
    time.sleep(3)  # let the engine's processes exit before the next one starts


def rate(rounds: int, fn) -> dict:
    tokens, seconds = 0, 0.0
    for _ in range(rounds):
        n, secs = fn()
        tokens += n
        seconds += secs
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--beam-rounds", type=int, default=1, help="rounds of dbs vs LLM.beam_search (slow on CPU)")
    parser.add_argument("--out", default="benchmarks/results/vllm.json")
    args = parser.parse_args()

    from vllm import SamplingParams
    from vllm.sampling_params import BeamSearchParams, StructuredOutputsParams

    from anydecode.models import ensure_hf_copy
    from anydecode.plugins.vllm import generate

    path = str(ensure_hf_copy())
    ps = prompts(args.requests)
    report: dict = {"requests": len(ps), "max_tokens": args.max_tokens, "rounds": args.rounds}
    greedy = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)

    def plain_requests(llm):
        def run():
            outs, secs = timed(lambda: llm.generate(ps, greedy, use_tqdm=False))
            return tokens_of(outs), secs
        run()  # warm-up
        return rate(args.rounds, run)

    # 1. plain engine: plain requests, then dbs against LLM.beam_search (4 beams in all)
    llm = make_engine(path, processor=False)
    plain_first = plain_requests(llm)
    beam_prompts = ps[:2]

    def ours_dbs():
        outs, secs = timed(lambda: generate(llm, beam_prompts, decoder="dbs", num_beams=4, num_beam_groups=2,
                                            diversity_penalty=0.5, max_new_tokens=12))
        return sum(len(g.sequences[0].token_ids) for g in outs), secs

    def native_beam():
        outs, secs = timed(lambda: llm.beam_search([{"prompt": p} for p in beam_prompts],
                                                   BeamSearchParams(beam_width=4, max_tokens=12)))
        return sum(len(o.sequences[0].tokens) - len(llm.get_tokenizer().encode(p))
                   for o, p in zip(outs, beam_prompts)), secs

    report["dbs_over_engine_vs_llm_beam_search"] = alternate(args.beam_rounds, ours_dbs, native_beam)
    close(llm)

    # 2. the processor engine: plain requests, then grammar decoders against vLLM's structured outputs
    llm = make_engine(path, processor=True)
    with_processor = plain_requests(llm)
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
                timed(lambda: llm.generate(json_prompts, p, use_tqdm=False))),
            lambda: (lambda o: (tokens_of(o[0]), o[1]))(
                timed(lambda: llm.generate(json_prompts, native, use_tqdm=False))),
        )
    close(llm)

    # 3. the plain engine again: how much the machine drifted
    llm = make_engine(path, processor=False)
    plain_last = plain_requests(llm)
    close(llm)
    baseline = (plain_first["tokens_per_s"] + plain_last["tokens_per_s"]) / 2
    report["plain_requests_processor_installed_vs_not"] = {
        "a_tokens_per_s": with_processor["tokens_per_s"], "b_tokens_per_s": baseline,
        "ratio": with_processor["tokens_per_s"] / baseline,
        "plain_first_tokens_per_s": plain_first["tokens_per_s"], "plain_last_tokens_per_s": plain_last["tokens_per_s"],
    }

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    for key, value in report.items():
        if isinstance(value, dict):
            print(f"{key}: ratio {value['ratio']:.3f}  ({value['a_tokens_per_s']:.1f} vs "
                  f"{value['b_tokens_per_s']:.1f} tok/s)")
    first, last = plain_first["tokens_per_s"], plain_last["tokens_per_s"]
    print(f"plain engine before and after: {first:.1f} and {last:.1f} tok/s (drift {last / first:.3f}x)")


if __name__ == "__main__":
    main()
