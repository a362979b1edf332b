"""The worked example plugin, installed for real with pip, is found through its entry point and runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "anydecode-example-plugin"
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(EXAMPLE)], check=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k != "ANYDECODE_DISABLE_PLUGINS"}
    env["PYTHONPATH"] = os.pathsep.join([str(target), env.get("PYTHONPATH", "")])
    return env


def cli(env, *args):
    return subprocess.run([sys.executable, "-m", "anydecode.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_installed_plugin_is_listed_with_its_distribution(plugin_env):
    out = cli(plugin_env, "decoders", "--json")
    assert out.returncode == 0, out.stderr
    typical = next(d for d in json.loads(out.stdout)["decoders"] if d["name"] == "typical")
    assert typical["source"].startswith("anydecode-example-plugin 0.1.0")
    assert "typical_mass" in {f["name"] for f in typical["fields"]}


def test_installed_plugin_decoder_runs_and_validates(plugin_env):
    out = cli(plugin_env, "run", "--decoder", "typical", "--set", "typical_mass=0.5", "--seed", "3",
              "--prompt", "Once upon a time", "--max-new-tokens", "6", "--json", "--quiet")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["decoder"] == "typical"
    bad = cli(plugin_env, "run", "--decoder", "typical", "--set", "typical_mass=2", "--prompt", "x")
    assert bad.returncode == 2 and "typical_mass=2.0 is out of range" in bad.stderr


def test_plugins_are_blocked_when_asked(plugin_env):
    out = cli({**plugin_env, "ANYDECODE_DISABLE_PLUGINS": "1"}, "decoders", "--json")
    assert "typical" not in {d["name"] for d in json.loads(out.stdout)["decoders"]}
