"""A runtime from a third-party package reaches every command (run, bench, conformance) without editing
anydecode: the CLI dispatches through the runtime registry."""

from __future__ import annotations

import json

import pytest

from anydecode.cli import main
from anydecode.registry import get_registry
from tests.helpers import toy_runtime_plugin as plugin


@pytest.fixture
def digits():
    registry = get_registry()
    with registry.plugin(plugin, name="digits-plugin"):
        yield plugin.RUNTIME


def test_the_runtime_is_registered_and_listed(digits, capsys):
    assert get_registry().runtime("digits") is digits
    assert main(["decoders", "--json"]) == 0
    runtimes = json.loads(capsys.readouterr().out)["runtimes"]
    assert {"name": "digits", "source": "plugin digits-plugin"}.items() <= next(
        r for r in runtimes if r["name"] == "digits").items()


@pytest.mark.parametrize("decoder,settings", [
    ("greedy", []), ("sample", ["--seed", "3"]), ("iad", []), ("beam", ["--set", "num_beams=2"]),
    ("best_of_n", ["--set", "num_samples=3", "--seed", "1"]),
])
def test_run_on_the_third_party_runtime(digits, capsys, decoder, settings):
    opened = digits.opened
    assert main(["run", "--runtime", "digits", "--decoder", decoder, *settings, "--prompt", "12312",
                 "--max-new-tokens", "6", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["runtime"] == "digits" and doc["decoder"] == decoder and 1 <= len(doc["token_ids"]) <= 6
    assert digits.opened > opened


def test_bench_on_the_third_party_runtime_uses_its_eos_and_baselines(digits, tmp_path, capsys):
    workload = tmp_path / "w.jsonl"
    workload.write_text("\n".join(json.dumps({"prompt": p, "max_new_tokens": 8}) for p in ("123", "4512", "3")))
    assert main(["bench", "--runtime", "digits", "--decoder", "greedy", "--baseline", "native-greedy",
                 "--workload", str(workload), "--out", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    # our greedy equals the runtime's own greedy loop: identical once the runtime's EOS (0, not 2) is stripped
    assert report["identical_share"] == 1.0 and report["runtime"] == "digits"


def test_bench_compares_outputs_without_the_runtimes_own_eos(digits, tmp_path, monkeypatch):
    """Issue 12: bench hard-coded EOS 2. It must strip the EOS the runtime's tokenizer names (digits: 0)."""
    import anydecode.bench as bench

    seen = []
    alternate = bench._alternate
    monkeypatch.setattr(bench, "_alternate", lambda a, b, items, eos, *rest: seen.append(eos) or alternate(
        a, b, items, eos, *rest))
    workload = tmp_path / "w.jsonl"
    workload.write_text(json.dumps({"prompt": "123", "max_new_tokens": 4}))
    assert main(["bench", "--runtime", "digits", "--decoder", "greedy", "--baseline", "native-greedy",
                 "--workload", str(workload), "--out", str(tmp_path), "--json"]) == 0
    assert seen == [{0}]


def test_conformance_on_the_third_party_runtime(digits, capsys):
    code = main(["conformance", "--runtime", "digits", "--quick", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["failed"] == 0 and report["runtime"] == "digits"


def test_an_unknown_runtime_names_the_registered_ones(capsys):
    assert main(["run", "--runtime", "digitz", "--prompt", "1"]) == 2
    err = capsys.readouterr().err
    assert "unknown runtime 'digitz'" in err and "llamacpp" in err
