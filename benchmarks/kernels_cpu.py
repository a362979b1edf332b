"""CPU cost of the cores' kernel call sites (issue 15) against the code they replaced, side by side in one process.

The cores now reach their hot loops through ``anydecode.kernels`` (the torch reference on CPU). This script runs the
code before (read from git, ``HEAD:<path>``, or rebuilt from the current file where other work changed it since)
and after alternately, many times, and prints medians and the ratio after / before:

* **verify**: one step of ``SpeculativeLoop._chain_step`` (block, forward, verification, bookkeeping) on a session
  whose forward costs nothing: ``B`` rows, ``k`` drafts, ``V`` tokens; greedy, sampling with deterministic drafts,
  sampling with a draft model's ``q``, and the same with top-k 50 + top-p 0.9; all rows starting at the same place
  (one row, or equal pending tokens: a view of the forward's output) and at different places (a gather);
* **tree**: ``SpeculativeLoop._verify_tree`` on a 3-way tree of 9 nodes (kernels.verify_tree_node per node);
* **mask**: the grammar transforms on ``R`` rows of the embedded model's vocabulary (49,152 tokens), through the
  request lifecycle as the transformers ``LogitsProcessor`` calls it: before, ``RequestTable.apply`` per row; after,
  ``RequestTable.apply_batch`` (one kernel call); and ``apply`` on one row (the shared loop, llama.cpp);
* **dbs**: a whole diverse beam search on a session whose forward returns fixed logits: per-step time.

    python benchmarks/kernels_cpu.py [--quick] [--threads 1] [--json out.json]

Timings are medians of thread CPU time over alternating runs; the machine may be shared, so quote ratios, not
absolute times.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def load_source(source: str, name: str, package: str) -> Any:
    """Execute ``source`` as module ``package.name`` (relative imports resolve inside ``package``)."""
    spec = importlib.util.spec_from_loader(f"{package}.{name}", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    module.__package__ = package
    sys.modules[spec.name] = module
    exec(compile(source, f"<{name}>", "exec"), module.__dict__)
    return module


def head(path: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), "show", f"HEAD:{path}"], capture_output=True, text=True,
                          check=True).stdout


def alternate(before: Callable[[], Any], after: Callable[[], Any], reps: int) -> tuple[float, float]:
    """Medians (ms of this thread's CPU time, which other processes on a shared machine disturb less than wall time)
    of ``before`` and ``after`` run alternately ``reps`` times each, after a warm-up."""
    for _ in range(2):
        before()
        after()
    a, b = [], []
    for _ in range(reps):
        t = time.thread_time()
        before()
        a.append(time.thread_time() - t)
        t = time.thread_time()
        after()
        b.append(time.thread_time() - t)
    return statistics.median(a) * 1e3, statistics.median(b) * 1e3


# -- speculative verification --------------------------------------------------------------------------------------
class FixedSession:
    """A session whose forward returns precomputed logits (verification is all that is timed)."""

    def __init__(self, out: torch.Tensor):
        self.out = out
        self.batch_size = out.shape[0]

    def append(self, block: torch.Tensor | list[list[int]]) -> torch.Tensor:
        return self.out[:, : len(block[0])]


class Drafter:
    def __init__(self, deterministic: bool):
        self.deterministic = deterministic


def verify_case(old_mod: Any, new_mod: Any, batch: int, k: int, vocab: int, mode: str, starts: str,
                g: torch.Generator) -> tuple[Any, Any]:
    from anydecode.algorithms.speculative.config import SpeculativeSampling
    from anydecode.algorithms.speculative.draft import Draft
    from anydecode.algorithms.speculative.verify import SeededCoins

    sampling = {"greedy": SpeculativeSampling(temperature=0.0),
                "lookup": SpeculativeSampling(temperature=0.7),
                "q": SpeculativeSampling(temperature=0.7),
                "q+top": SpeculativeSampling(temperature=0.7, top_k=50, top_p=0.9)}[mode]
    pending = [[1] if starts == "same" else [1] * (1 + b % 3) for b in range(batch)]
    width = max(len(p) for p in pending) + k
    out = torch.randn(batch, width, vocab, generator=g) * 3
    prev = torch.randn(batch, vocab, generator=g) * 3
    drafts = []
    for b in range(batch):
        start = len(pending[b])
        tokens, qs = [], []
        for j in range(k):
            target = (prev[b] if start + j == 0 else out[b, start + j - 1]) / 0.7
            if mode in ("q", "q+top"):
                q = torch.softmax((target + torch.randn(vocab, generator=g)).double(), dim=-1)
                tokens.append(int(torch.multinomial(q, 1, generator=g)))
                qs.append(q)
            else:
                best = int(target.argmax())
                tokens.append(best if float(torch.rand(1, generator=g)) < 0.7 else int(torch.randint(vocab, (1,))))
        drafts.append(Draft(tokens, None, torch.stack(qs) if qs else None))
    active = [True] * batch

    def make(mod: Any, old: bool) -> Any:
        loop = mod.SpeculativeLoop.__new__(mod.SpeculativeLoop)
        loop.session = FixedSession(out)
        loop.forward_passes = 0
        loop.pad = 0
        loop.greedy = sampling.greedy
        loop.sampling = sampling
        loop.drafter = Drafter(mode not in ("q", "q+top"))
        loop.generated = [[5] * 10 for _ in range(batch)]
        loop.ctx = None
        if old:
            loop.pre_transform = None
            loop.coins = SeededCoins(0)
        else:
            loop.processors = None
            loop.coins = None
            loop.seed = 1234
        return lambda: loop._chain_step(prev, pending, drafts, active)

    return make(old_mod, True), make(new_mod, False)


def tree_case(old_mod: Any, new_mod: Any, vocab: int, deterministic: bool, outcome: str,
              g: torch.Generator) -> tuple[Any, Any]:
    """A 3-way tree of 9 nodes whose walk is the same whatever the random numbers: every first child accepted down
    to a leaf and a bonus token drawn (``accept``), or every child of the root rejected and the next token drawn
    from the last residual (``reject``)."""
    from anydecode.algorithms.speculative.config import SpeculativeSampling
    from anydecode.algorithms.speculative.draft import Draft
    from anydecode.algorithms.speculative.verify import SeededCoins

    sampling = SpeculativeSampling(temperature=0.7, top_p=0.9)
    parents = [-1, -1, -1, 0, 0, 0, 1, 1, 1]
    tokens = [10, 11, 12, 20, 21, 22, 30, 31, 32]
    logits = torch.randn(len(parents) + 1, vocab, generator=g) * 3  # row node + 1: after node (row 0: the root)
    if outcome == "accept":
        logits[0, 10] += 60.0
        logits[1, 20] += 60.0
    else:
        logits[0, 99] += 60.0
    q = None
    if not deterministic:
        q = torch.stack([torch.softmax((logits[p + 1] / 0.7 + torch.randn(vocab, generator=g)).double(), dim=-1)
                         for p in parents])
    draft = Draft(tokens, parents, q)

    def make(mod: Any, old: bool) -> Any:
        loop = mod.SpeculativeLoop.__new__(mod.SpeculativeLoop)
        loop.greedy = False
        loop.sampling = sampling
        loop.drafter = Drafter(deterministic)
        loop.generated = [[5] * 10]
        if old:
            loop.pre_transform = None
            loop.coins = SeededCoins(0)
        else:
            loop.processors = None
            loop.coins = None
            loop.seed = 1234
        return lambda: loop._verify_tree(0, draft, lambda node: logits[node + 1])

    return make(old_mod, True), make(new_mod, False)


def bench_verify(reps: int, quick: bool, rows: list[dict]) -> None:
    old_mod = load_source(head("algorithms/speculative/decode.py"), "decode_before", "anydecode.algorithms.speculative")
    from anydecode.algorithms.speculative import decode as new_mod

    g = torch.Generator().manual_seed(0)
    vocab = 49152
    batches = [1, 8] if quick else [1, 2, 4, 8]
    for mode in ("greedy", "lookup", "q", "q+top"):
        for batch in batches:
            for k in (4, 8):
                for starts in (("same",) if batch == 1 else ("same", "mixed")):
                    before, after = verify_case(old_mod, new_mod, batch, k, vocab, mode, starts, g)
                    a, b = alternate(before, after, reps)
                    report(rows, "verify", f"{mode} B={batch} k={k} starts={starts}", a, b)
    for outcome in ("accept", "reject"):
        for deterministic in (True, False):
            before, after = tree_case(old_mod, new_mod, vocab, deterministic, outcome, g)
            a, b = alternate(before, after, reps)
            kind = "deterministic" if deterministic else "q"
            report(rows, "tree", f"9-node tree, {kind} drafts, top-p 0.9, {outcome}", a, b)


# -- grammar masking -----------------------------------------------------------------------------------------------
SCHEMA = ('{"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}, "rain": {"type": '
          '"boolean"}}, "required": ["city", "rain"], "additionalProperties": false}')


def bench_mask(reps: int, quick: bool, rows: list[dict]) -> None:
    from transformers import AutoTokenizer

    from anydecode.algorithms.grammar import AsapConfig, AsapStateStore, GrammarConfig, from_transformers, \
        get_engine, grammar_spec
    from anydecode.algorithms.grammar import transforms as new_mod
    from anydecode.algorithms.lifecycle import RequestTable
    from anydecode.models import ensure_hf_copy

    old_mod = load_source(head("algorithms/grammar/transforms.py"), "transforms_before", "anydecode.algorithms.grammar")
    tok = AutoTokenizer.from_pretrained(ensure_hf_copy())
    vocab = from_transformers(tok)
    V = vocab.vocab_size
    prefix = tok.encode('{"city": "Par', add_special_tokens=False)
    cases = [("llguidance", "json_schema", SCHEMA)]
    if not quick:
        cases.append(("outlines", "regex", r"[a-z ]{1,80}\."))
    g = torch.Generator().manual_seed(1)
    for engine, fmt, text in cases:
        compiled = get_engine(engine).compile(grammar_spec(text, fmt), vocab)
        gen = prefix if fmt == "json_schema" else tok.encode("the city of par", add_special_tokens=False)
        for kind in ("gcd", "asap"):
            cfg = (AsapConfig if kind == "asap" else GrammarConfig)(grammar=text, grammar_format=fmt, engine=engine,
                                                                   temperature=0.8)

            def transform(mod: Any) -> Any:
                if kind == "gcd":
                    return mod.GrammarConstrainedTransform(compiled, cfg)
                return mod.AsapTransform(compiled, cfg, AsapStateStore())

            for count in ([1, 4, 16] if quick else [1, 2, 4, 8, 16]):
                logits = torch.randn(count, V, generator=g) * 3
                t_old, t_new = transform(old_mod), transform(new_mod)
                old_table, new_table = RequestTable([0]), RequestTable([0])
                for i in range(count):
                    old_table.start(i, t_old, [7])
                    new_table.start(i, t_new, [7])
                keys = list(range(count))
                gens = [list(gen) for _ in range(count)]
                old_table.apply(0, gens[0], logits[0])
                new_table.apply_batch(keys, gens, logits)
                if kind == "asap":  # some explored children with EFG below 1 at the rows' node
                    for table in (old_table, new_table):
                        node = table._live[0].state.node
                        for t in torch.randint(V, (20,), generator=g).tolist():
                            table._live[0].state.trie.child(node, t, 1e-3).efg = 0.25

                def before() -> None:
                    for i in keys:
                        old_table.apply(i, gens[i], logits[i])

                a, b = alternate(before, lambda: new_table.apply_batch(keys, gens, logits), reps)
                report(rows, "mask", f"{kind} {engine} rows={count} (hook)", a, b)
                if count == 1:
                    s_old, s_new = old_table._live[0].state, new_table._live[0].state
                    a, b = alternate(lambda: t_old.apply(s_old, gens[0], logits[0]),
                                     lambda: t_new.apply(s_new, gens[0], logits[0]), reps)
                    report(rows, "mask", f"{kind} {engine} one row (transform.apply)", a, b)


# -- diverse beam search -------------------------------------------------------------------------------------------
class BeamSession:
    """Rows that select and append instantly; the logits of a step are fixed."""

    def __init__(self, logits: torch.Tensor):
        self.logits = logits
        self.batch_size = logits.shape[0]

    def select(self, rows: Any) -> None:
        self.batch_size = len(rows)

    def append(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.logits[: tokens.shape[0]].unsqueeze(1)


def beam_before_source() -> str:
    """The current beam.py with its per-step candidate selection as it was before the kernels (per-group
    ``_penalty`` + ``topk``): other work changed the file since HEAD."""
    source = (ROOT / "algorithms/search/beam.py").read_text()
    start = source.index("            kept = min(keep, group_size * vocab)\n")
    end = source.index("                for p in range(prompts):\n                    base = p * width + g * group_size\n")
    old = """            for g in range(groups):
                index = torch.tensor([p * width + g * group_size + j for p in range(prompts)
                                      for j in range(group_size)], dtype=torch.long)
                scores = logp.index_select(0, index)
                if g > 0:
                    scores = scores - _penalty(diversity, diversity_penalty, diversity_ngram, tokens, parents,
                                               sequences, prompts, width, g, group_size, vocab, dtype)
                total = (scores + beam_scores.index_select(0, index).unsqueeze(-1)).view(prompts, group_size * vocab)
                top_scores, top_index = torch.topk(total, min(keep, group_size * vocab), dim=1, largest=True,
                                                   sorted=True)
                top_scores_l = top_scores.tolist()
                top_beam_l = (top_index // vocab).tolist()
                top_token_l = (top_index % vocab).tolist()
"""
    return source[:start] + old + source[end:]


def bench_dbs(reps: int, quick: bool, rows: list[dict]) -> None:
    from anydecode.algorithms.contracts.decoder import DecodeContext
    from anydecode.algorithms.search import beam as new_mod

    old_mod = load_source(beam_before_source(), "beam_before", "anydecode.algorithms.search")
    vocab = 49152
    steps = 8
    g = torch.Generator().manual_seed(2)
    shapes = [(1, 4, 2), (4, 8, 4)] if quick else [(1, 4, 2), (1, 8, 4), (4, 4, 2), (4, 8, 4), (2, 6, 3)]
    for prompts, beams, groups in shapes:
        step_logits = torch.randn(prompts * beams, vocab, generator=g) * 3

        def run(mod: Any) -> Callable[[], Any]:
            def go() -> Any:
                session = BeamSession(step_logits)
                session.batch_size = prompts
                ctx = DecodeContext(vocab_size=vocab, eos_token_ids=frozenset({0}), session=session,
                                    prompts=[[1]] * prompts, prompt_logits=step_logits[:prompts],
                                    max_new_tokens=steps)
                return mod.beam_search(ctx, num_beams=beams, num_beam_groups=groups, diversity_penalty=0.5)
            return go

        a, b = alternate(run(old_mod), run(new_mod), max(3, reps // 3))
        report(rows, "dbs", f"P={prompts} beams={beams} groups={groups} (per step)", a / steps, b / steps)


def report(rows: list[dict], section: str, case: str, before: float, after: float) -> None:
    rows.append({"section": section, "case": case, "before_ms": before, "after_ms": after, "ratio": after / before})
    print(f"{section:7s} {case:48s} before {before:9.3f} ms  after {after:9.3f} ms  after/before {after / before:5.2f}",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes and repetitions")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier on a shared box)")
    parser.add_argument("--reps", type=int, default=None, help="alternations per case")
    parser.add_argument("--only", choices=("verify", "mask", "dbs"), default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    np.random.seed(0)
    reps = args.reps or (7 if args.quick else 21)
    rows: list[dict] = []
    for name, fn in (("verify", bench_verify), ("mask", bench_mask), ("dbs", bench_dbs)):
        if args.only in (None, name):
            fn(reps, args.quick, rows)
    if args.json is not None:
        args.json.write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
