"""Greedy replay of drafters on editing workloads, without a model: tokens per target pass if every draft token
that matches a recorded output is accepted.

    python benchmarks/replay_drafters.py [--workload editing2 code_edit ...] [--limits 8,64] [--edit-rate 0.05]
        [--drafters prompt_lookup,iad,suffix,...] [--json]

For each workload line the "output" is the text the prompt asks to edit (everything after the prompt's first
blank line) copied verbatim, optionally with a share of its word tokens replaced (``--edit-rate``, seeded), which
stands in for the edits a model would make. Text is split into tokens by a simple regex (words and punctuation,
with the whitespace before them), not the model's tokenizer. Each step, the drafter proposes at most ``limit``
tokens given the prompt and the output so far; the longest draft path that matches the recorded output is
accepted, plus the next recorded token (the target's own token at the first mismatch, or the bonus token), as
greedy verification does. A tree draft is walked along the child that matches. Reported per drafter: tokens per
target pass (the output length over the number of steps), draft tokens per step and the share accepted.

Replays the same token sequence for every drafter, so the ratios between drafters are what this measures; the
absolute figures depend on the tokenizer and the edit model. ``oracle`` drafts the recording itself: the bound.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from anydecode.algorithms.speculative.draft import Draft, Drafter
from anydecode.algorithms.speculative.iad import IADConfig, IADDrafter
from anydecode.algorithms.speculative.oracle import OracleConfig, OracleDrafter
from anydecode.algorithms.speculative.prompt_lookup import PromptLookupConfig, PromptLookupDrafter
from anydecode.algorithms.speculative.suffix import SuffixConfig, SuffixDrafter
from anydecode.algorithms.speculative.suffix_tree import SuffixCorpus
from anydecode.workloads import FOLDER

HERE = Path(__file__).resolve().parent
TOKEN = re.compile(r"\s*\w+|\s*[^\w\s]|\s+")


class Vocabulary:
    """Token strings to ids, grown as text is seen (shared by all prompts of a run)."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def encode(self, text: str) -> list[int]:
        return [self.ids.setdefault(piece, len(self.ids)) for piece in TOKEN.findall(text)]

    def fresh(self) -> int:
        """An id no text has."""
        return self.ids.setdefault(f"<edit {len(self.ids)}>", len(self.ids))


def load(workload: str) -> list[dict[str, Any]]:
    path = Path(workload)
    if not path.exists():
        path = FOLDER / f"{workload}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def edited(tokens: list[int], rate: float, vocab: Vocabulary, rng: random.Random) -> list[int]:
    """``tokens`` with a share ``rate`` of them replaced by new tokens (a stand-in for a model's edits)."""
    return [vocab.fresh() if rng.random() < rate else t for t in tokens]


def accepted_path(draft: Draft, expected: Sequence[int]) -> list[int]:
    """The draft nodes greedy verification accepts: the longest path whose tokens equal ``expected``."""
    parents = draft.node_parents()
    path: list[int] = []
    node = -1
    for want in expected:
        child = next((i for i, p in enumerate(parents) if p == node and draft.tokens[i] == want), None)
        if child is None:
            break
        path.append(child)
        node = child
    return path


def replay(drafter: Drafter, prompt: list[int], output: list[int], limit: int) -> dict[str, float]:
    drafter.start([prompt])
    generated: list[int] = []
    steps = drafted = accepted = 0
    while len(generated) < len(output):
        room = len(output) - len(generated) - 1  # the loop leaves room for the target's own token
        draft = drafter.propose([prompt + generated], [max(0, min(limit, room))])[0]
        draft = draft.cut(max(0, min(limit, room)))
        path = accepted_path(draft, output[len(generated):])
        drafter.feedback(0, draft, path)
        take = len(path) + 1
        generated.extend(output[len(generated): len(generated) + take])
        steps += 1
        drafted += len(draft)
        accepted += len(path)
    finish = getattr(drafter, "finish", None)
    if finish is not None:
        finish([generated])
    return {"tokens": len(output), "steps": steps, "drafted": drafted, "accepted": accepted}


def drafter_factories(corpus: SuffixCorpus) -> dict[str, Callable[[list[int]], Drafter]]:
    """Each drafter by name, made for one recorded output (only the oracle reads it)."""
    return {
        "prompt_lookup": lambda out: PromptLookupDrafter(PromptLookupConfig()),
        "iad": lambda out: IADDrafter(IADConfig()),
        "iad+fallback": lambda out: IADDrafter(IADConfig(fallback=True)),
        "suffix": lambda out: SuffixDrafter(SuffixConfig()),
        "suffix-tree": lambda out: SuffixDrafter(SuffixConfig(tree=True)),
        # transformers' defaults (a further block token costs 0.09 of a forward there): a tree, 4 tokens per match
        "suffix-cheap": lambda out: SuffixDrafter(SuffixConfig(), block_token_cost=0.09),
        "suffix+corpus": lambda out: SuffixDrafter(SuffixConfig(), corpus),
        "oracle": lambda out: OracleDrafter(OracleConfig(continuation_ids=tuple(out), max_draft_tokens=1 << 20)),
    }


def run(workloads: list[str], limits: list[int], names: list[str], edit_rate: float, seed: int) -> dict[str, Any]:
    results: dict[str, Any] = {"edit_rate": edit_rate, "seed": seed, "workloads": {}}
    for workload in workloads:
        rows = load(workload)
        vocab = Vocabulary()
        cases = []
        for i, row in enumerate(rows):
            prompt_text = row["prompt"]
            body = prompt_text.split("\n\n", 1)[1] if "\n\n" in prompt_text else prompt_text
            output = edited(vocab.encode(body), edit_rate, vocab, random.Random(seed * 1000003 + i))
            cases.append((vocab.encode(prompt_text), output))
        per_limit: dict[str, Any] = {}
        for limit in limits:
            per_drafter: dict[str, Any] = {}
            for name in names:
                corpus = SuffixCorpus()  # a fresh corpus per drafter and limit: earlier outputs of this workload
                make = drafter_factories(corpus)[name]
                total = {"tokens": 0, "steps": 0, "drafted": 0, "accepted": 0}
                started = time.perf_counter()
                for prompt, output in cases:
                    for key, value in replay(make(output), prompt, output, limit).items():
                        total[key] += value
                seconds = time.perf_counter() - started
                per_drafter[name] = {
                    "tokens_per_pass": total["tokens"] / max(total["steps"], 1),
                    "draft_tokens_per_step": total["drafted"] / max(total["steps"], 1),
                    "acceptance": total["accepted"] / max(total["drafted"], 1),
                    "drafter_ms_per_step": 1000 * seconds / max(total["steps"], 1),
                    **total,
                }
            per_limit[str(limit)] = per_drafter
        results["workloads"][workload] = {"prompts": len(cases), "limits": per_limit}
    return results


def print_table(results: dict[str, Any]) -> None:
    print(f"greedy replay, edit rate {results['edit_rate']}: tokens per target pass "
          "(draft tokens per step, share accepted, drafter ms per step)")
    for workload, data in results["workloads"].items():
        for limit, per_drafter in data["limits"].items():
            print(f"\n{workload} ({data['prompts']} prompts), limit {limit}")
            for name, r in per_drafter.items():
                print(f"  {name:14s} {r['tokens_per_pass']:6.2f}   ({r['draft_tokens_per_step']:5.1f}, "
                      f"{r['acceptance']:.2f}, {r['drafter_ms_per_step']:.2f} ms)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", nargs="+", default=["editing2", "code_edit"],
                        help="workload names under benchmarks/workloads or JSONL paths")
    parser.add_argument("--limits", default="8,64", help="most draft tokens per step, comma-separated")
    parser.add_argument("--drafters",
                        default="prompt_lookup,iad,iad+fallback,suffix,suffix-tree,suffix-cheap,suffix+corpus,oracle")
    parser.add_argument("--edit-rate", type=float, default=0.0, help="share of output tokens replaced")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    limits = [int(x) for x in args.limits.split(",") if x.strip()]
    names = [x.strip() for x in args.drafters.split(",") if x.strip()]
    unknown = [n for n in names if n not in drafter_factories(SuffixCorpus())]
    if unknown:
        parser.error(f"unknown drafter {unknown[0]!r}; known: {', '.join(drafter_factories(SuffixCorpus()))}")
    results = run(args.workload, limits, names, args.edit_rate, args.seed)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
