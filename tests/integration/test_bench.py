"""``anydecode bench`` and ``benchmarks/speculative_bench.py`` on the real llama.cpp runtime, a short workload."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from anydecode.workloads import FOLDER

ROOT = Path(__file__).resolve().parents[2]


def test_bench_script_reports_both_ratios_and_identical_greedy_output(tmp_path):
    lines = [json.loads(x) for x in (FOLDER / "editing.jsonl").read_text().splitlines()]
    workload = tmp_path / "two.jsonl"
    workload.write_text("\n".join(json.dumps(line | {"max_new_tokens": 24}) for line in lines[:2]) + "\n")
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "speculative_bench.py"), "--runtime", "llamacpp",
                           "--decoder", "greedy", "--baseline", "native-greedy", "--workload", str(workload),
                           "--out", str(out), "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["prompts"] == 2 and report["identical_share"] == 1.0
    assert report["a_tokens"] == report["b_tokens"] == 48
    # the prompt's forward pass was timed on both sides and removed from the decoding rates
    assert 0 < report["a_prefill_seconds"] < report["a_seconds"]
    assert 0 < report["b_prefill_seconds"] < report["b_seconds"]
    assert report["a_decode_tokens_per_s"] > report["a_tokens_per_s"]
    assert report["decode_ratio"] > 0
    assert (out / "llamacpp-greedy-vs-native-greedy-two.png").is_file()
