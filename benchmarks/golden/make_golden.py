"""Build a transformers 4.x environment and record its group beam search outputs as golden test data.

transformers 5 moved group (diverse) beam search out of its core, so the reference behaviour comes from the last
4.x releases that still ship it. This script makes a separate virtual environment (``benchmarks/golden/.venv``,
ignored by git), installs torch and transformers 4.x there, and runs ``record_tx4.py`` in it on the tiny
random-weight Llama (``tiny_llama.py``) and on the embedded GGUF model. Run from the repository root:

    python benchmarks/golden/make_golden.py            # writes conformance/data/dbs_golden_tx4.json

The unit test ``tests/unit/test_search_golden.py`` and the integration test ``tests/integration/test_search_hf.py``
check that ``dbs`` reproduces the recorded outputs token for token, with scores within 1e-4.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
VENV = HERE / ".venv"
#: the last 4.x line whose GenerationMixin still runs group beam search itself (no Hub repo)
REQUIREMENTS = ["torch==2.13.0", "transformers==4.53.3", "gguf", "accelerate", "numpy"]


def venv_python() -> Path:
    return VENV / "bin" / "python"


def ensure_venv() -> Path:
    python = venv_python()
    check = [str(python), "-c", "import transformers, torch; assert transformers.__version__.startswith('4.')"]
    if python.exists() and subprocess.run(check, capture_output=True, check=False).returncode == 0:
        return python
    print(f"building {VENV} with {' '.join(REQUIREMENTS)}", flush=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *REQUIREMENTS], check=True)
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "conformance" / "data" / "dbs_golden_tx4.json"))
    parser.add_argument("--gguf", default=None, help="GGUF model file (default: the embedded SmolLM2)")
    args = parser.parse_args()
    gguf = args.gguf
    if gguf is None:
        from anydecode.models import default_gguf_path

        gguf = str(default_gguf_path())
    python = ensure_venv()
    subprocess.run([str(python), str(HERE / "record_tx4.py"), "--gguf", gguf, "--out", args.out], check=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
