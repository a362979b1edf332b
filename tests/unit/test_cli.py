"""CLI user errors: exit code 2, one line naming the problem, no traceback (unless --debug)."""

import json
import subprocess
import sys

import pytest

from anydecode.cli import main


def cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "anydecode.cli", *args], capture_output=True, text=True,
                          input=stdin, timeout=300)


@pytest.mark.parametrize("args,expect", [
    (["run", "--decoder", "gredy", "--prompt", "x"], "unknown decoder 'gredy' (did you mean 'greedy'?)"),
    (["run", "--runtime", "hff", "--prompt", "x"], "unknown runtime 'hff' (did you mean 'hf'?)"),
    (["run", "--decoder", "sample", "--set", "top_k=many", "--prompt", "x"], "top_k='many'"),
    (["run", "--decoder", "sample", "--set", "tempreature=1", "--prompt", "x"], "temperature: float"),
    (["run", "--set", "novalue", "--prompt", "x"], "--set takes key=value"),
    (["run", "--model", "/nonexistent/m.gguf", "--prompt", "x"], "model file not found: /nonexistent/m.gguf"),
    (["run", "--decoder", "greedy", "--seed", "3", "--prompt", "x"], "takes no seed"),
])
def test_user_errors_exit_2_without_traceback(args, expect, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert expect in err and "Traceback" not in err and err.count("\n") == 1


def test_debug_shows_the_traceback():
    out = cli("--debug", "run", "--decoder", "gredy", "--prompt", "x")
    assert out.returncode != 0 and "Traceback" in out.stderr


def test_decoders_json_lists_every_kind_with_sources_and_fields():
    out = cli("decoders", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert set(doc) == {"decoders", "drafters", "grammar_engines", "rewards", "runtimes"}
    sample = next(d for d in doc["decoders"] if d["name"] == "sample")
    assert sample["source"] == "anydecode.builtin.sampling"
    assert {f["name"] for f in sample["fields"]} == {"temperature", "top_k", "top_p", "min_p", "seed"}
    assert sample["claim"] == "sampling" and all(f["request"] for f in sample["fields"])
    assert {r["name"] for r in doc["runtimes"]} >= {"llamacpp", "hf", "vllm", "toy"}


def test_conformance_toy_suite_passes():
    out = cli("conformance", "--runtime", "toy", "--quick", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["failed"] == 0


def test_shipped_workloads_load_from_the_installed_package_outside_a_checkout(tmp_path, monkeypatch):
    """Issue 12: bench found workloads only in a source checkout's benchmarks/ folder."""
    from anydecode import workloads
    from anydecode.bench import load_workload

    monkeypatch.chdir(tmp_path)  # no benchmarks/ folder here
    names = workloads.names()
    assert {"chat", "editing", "editing2", "code_edit", "rewrite"} <= set(names)
    for name in names:
        items = load_workload(name, 2)
        assert items and all(isinstance(i["prompt"], str) and i["max_new_tokens"] > 0 for i in items)
    assert load_workload(None, 1)[0]["prompt"] == load_workload("chat", 1)[0]["prompt"]
