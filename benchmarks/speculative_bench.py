"""Speculative decoders against a baseline on the embedded model, side by side in one process.

    python benchmarks/speculative_bench.py --runtime hf|llamacpp --decoder iad [--set k=v ...]
        --baseline native-greedy|native-prompt-lookup|native-assisted|NAME [--workload editing|chat|FILE.jsonl]
        [--limit N] [--json]

The same benchmark as ``anydecode bench`` (``anydecode/bench.py``), kept here beside the workloads: each prompt
(a workload line ``{"prompt": ..., "chat": bool, "max_new_tokens": N}``) runs A and B alternately after one
warm-up of each. It prints tokens/s of each with the prompt's forward pass included (as a user sees it) and
without it (decoding speed, the same prompt work removed from both), the ratios, the share of identical outputs
and the acceptance statistics, and writes a JSON and a PNG to ``benchmarks/results/``.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    from anydecode.cli import main as cli_main

    args = list(sys.argv[1:] if argv is None else argv)
    if "--out" not in args:
        args += ["--out", str(HERE / "results")]
    return cli_main(["bench", *args])


if __name__ == "__main__":
    sys.exit(main())
