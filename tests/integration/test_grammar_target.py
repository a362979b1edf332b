"""ASAp against GCD on the embedded model, held to the exact target computed from the model itself; the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "grammar_kl.py"


@pytest.mark.parametrize("runtime", ["llamacpp", "hf"])
def test_asap_kl_after_n_samples_is_below_gcds_on_the_real_model(runtime, tmp_path):
    out = tmp_path / "kl.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--runtime", runtime, "--samples", "24", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["language_size"] == 17 and result["all_outputs_in_language"]
    assert result["asap_kl"][-1] < 0.1 * result["gcd_kl"], (result["asap_kl"], result["gcd_kl"])
    assert out.with_suffix(".png").stat().st_size > 1000  # the KL-against-samples plot


def test_cli_prints_n_grammar_samples_and_rejects_a_bad_grammar(tmp_path):
    grammar = tmp_path / "answer.lark"
    grammar.write_text('start: " " ("yes" | "no")\n')
    run = [sys.executable, "-m", "anydecode.cli", "run", "--decoder", "asap", "--grammar", str(grammar), "-n", "3",
           "--seed", "1", "--prompt", "Is the sky blue? Answer:", "--max-new-tokens", "4", "--quiet"]
    proc = subprocess.run(run, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 3 and all(line.strip() in ("yes", "no") for line in lines), proc.stdout
    bad = tmp_path / "bad.lark"
    bad.write_text('start: "a"\n  | (\n')
    bad_run = [str(bad) if arg == str(grammar) else arg for arg in run]
    proc = subprocess.run(bad_run, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "line" in proc.stderr and "Traceback" not in proc.stderr
