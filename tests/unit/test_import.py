"""``import anydecode`` imports no runtime, and works with every runtime hidden."""

import subprocess
import sys

RUNTIMES = ("transformers", "llama_cpp", "vllm")


def run(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_import_anydecode_imports_no_runtime():
    code = ("import sys, anydecode, anydecode.plugins.llamacpp, anydecode.conformance;"
            "anydecode.get_registry().decoders();"
            f"print([m for m in {RUNTIMES!r} if m in sys.modules])")
    out = run(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_import_works_with_no_runtime_installed():
    block = "".join(f"sys.modules[{m!r}] = None;" for m in RUNTIMES)
    code = (f"import sys; {block} import anydecode; from anydecode.plugins import llamacpp;"
            "print(sorted(anydecode.get_registry().decoders()))")
    out = run(code)
    assert out.returncode == 0, out.stderr
    assert "greedy" in out.stdout


def test_missing_runtime_gives_a_clear_error():
    code = ("import sys; sys.modules['llama_cpp'] = None; import anydecode.plugins.llamacpp as L\n"
            "try:\n    L.load_default()\nexcept Exception as e:\n    print(type(e).__name__, e)")
    out = run(code)
    assert "RuntimeAdapterError" in out.stdout and "pip install 'anydecode[llamacpp]'" in out.stdout
