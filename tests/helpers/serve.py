"""Start ``anydecode serve`` (vLLM's real OpenAI server) on 127.0.0.1 for a test module, and stop it."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def anydecode_serve(log_dir: Path, args: Sequence[str], timeout_s: float = 600, *, cwd: Path | None = None,
                    env: dict[str, str] | None = None) -> Iterator[tuple[Any, str, Any]]:
    """``anydecode serve ARGS`` on a free port; yields ``(openai client, base url, process)`` once /health answers.

    ``cwd``: the server's working folder (default: this process's); ``env``: variables added to its environment."""
    import openai

    port = free_port()
    log = open(log_dir / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "anydecode.cli", "serve", *args, "--host", "127.0.0.1",
                             "--port", str(port), "--max-model-len", "1024", "--max-num-seqs", "8",
                             "--enforce-eager", "--served-model-name", "smol"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                            env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_SERVER_DEV_MODE": "1",
                                 **(env or {})})
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout_s
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"anydecode serve exited with {proc.returncode}; log: {log.name}")
            try:
                with urllib.request.urlopen(base + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"anydecode serve did not come up in {timeout_s:.0f} s; log: {log.name}")
            time.sleep(2)
        yield openai.OpenAI(base_url=base + "/v1", api_key="none", timeout=300, max_retries=0), base, proc
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def collective_rpc(base: str, method: str, *args: Any) -> list[Any]:
    """Call a worker-extension method on every worker (vLLM's dev route; the helper's server sets
    ``VLLM_SERVER_DEV_MODE=1`` on 127.0.0.1 only)."""
    import json

    body = json.dumps({"method": method, "args": list(args)}).encode()
    req = urllib.request.Request(base + "/collective_rpc", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())["results"]


def metric(base: str, name: str) -> float:
    """The sum of a Prometheus counter of the server's ``/metrics`` over its label sets (0 where absent)."""
    with urllib.request.urlopen(base + "/metrics", timeout=30) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))
