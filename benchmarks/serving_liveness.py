"""Liveness of ``anydecode serve`` while a pathological grammar is checked (issue 11).

    python benchmarks/serving_liveness.py [--base-url http://127.0.0.1:8000] [--rounds 4] [--requests 20]

Without ``--base-url`` it starts ``anydecode serve --decoder asap --set engine=outlines --set grammar_seconds=5``
with the embedded model on 127.0.0.1 (and stops it at the end). The grammar ``(a|b)*a(a|b){25}`` is an exponential
automaton for outlines: the server's grammar checker (a separate, niced process) must refuse it with HTTP 400 once
``grammar_seconds`` pass, while the event loop and the engine keep serving everyone else.

Rounds alternate, in one process, an idle phase and a busy phase:

* idle: ``--requests`` plain completions (8 tokens, greedy) one after another, once the server has nothing else to
  do (the grammar checker has just answered a trivial grammar);
* busy: one pathological grammar (a new variant each round, so the checker's verdict cache cannot answer it) is
  sent, and plain completions are sent one after another until its 400 arrives;
* recovery: the refusal killed the stuck checker process and started a replacement; a trivial grammar is sent and
  plain completions are sent one after another until it is answered (the replacement has loaded the tokenizer).

Prints and writes ``benchmarks/results/serving_liveness.json``: the median plain latency idle, busy and during
recovery, their ratios to idle (the issue's target: within 2x), how many plain requests each phase served, and
each pathological request's status, time to refusal, and how long grammar checks then waited for the checker.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PROMPT = "The capital of France is"


def post(base: str, path: str, body: dict[str, Any], timeout: float = 300) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def plain(base: str) -> float:
    started = time.perf_counter()
    status, doc = post(base, "/v1/completions", {"model": "smol", "prompt": PROMPT, "max_tokens": 8,
                                                  "temperature": 0})
    if status != 200:
        raise RuntimeError(f"a plain request failed: {status} {doc}")
    return time.perf_counter() - started


def grammar_request(base: str, regex: str) -> tuple[int, dict[str, Any], float]:
    started = time.perf_counter()
    status, doc = post(base, "/v1/completions", {"model": "smol", "prompt": "a or b:", "max_tokens": 4,
                                                  "structured_outputs": {"regex": regex}})
    return status, doc, time.perf_counter() - started


def start_server(log_dir: Path, grammar_seconds: float) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(log_dir / "server.log", "w")
    cmd = [sys.executable, "-m", "anydecode.cli", "serve", "--decoder", "asap", "--set", "engine=outlines",
           "--set", f"grammar_seconds={grammar_seconds:g}", "--host", "127.0.0.1", "--port", str(port),
           "--max-model-len", "1024", "--max-num-seqs", "8", "--enforce-eager", "--served-model-name", "smol"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 900
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"anydecode serve exited with {proc.returncode}; log: {log.name}")
        try:
            with urllib.request.urlopen(base + "/health", timeout=5) as r:
                if r.status == 200:
                    return proc, base
        except OSError:
            pass
        if time.time() > deadline:
            proc.kill()
            raise RuntimeError(f"anydecode serve did not come up; log: {log.name}")
        time.sleep(2)


def while_pending(base: str, call: Any) -> tuple[Any, list[float]]:
    """Run ``call()`` in a thread; meanwhile send plain requests one after another. Returns its result and the
    latencies of the plain requests that completed while it was still pending."""
    outcome: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: outcome.update(result=call()))
    worker.start()
    latencies = []
    while worker.is_alive():
        latency = plain(base)
        if worker.is_alive():
            latencies.append(latency)
    worker.join()
    return outcome["result"], latencies


def run(base: str, rounds: int, requests: int) -> dict[str, Any]:
    for _ in range(3):
        plain(base)
    idle: list[float] = []
    busy: list[float] = []
    recovery: list[float] = []
    attacks = []
    for r in range(rounds + 1):
        # the checker answers a trivial grammar: started (or, after a refusal, restarted) and warm again
        (status, doc, seconds), during = while_pending(base, lambda r=r: grammar_request(base, f"(yes|no|r{r})"))
        if status != 200:
            raise RuntimeError(f"a trivial grammar was refused: {status} {doc}")
        if r == 0:
            first_grammar = seconds
        else:
            recovery += during
            attacks[-1].update(checker_back_after_s=round(seconds, 2), plain_requests_during_restart=len(during))
        if r == rounds:
            break
        idle += [plain(base) for _ in range(requests)]
        regex = f"(a|b)*a(a|b){{{25 + r}}}"
        (status, doc, seconds), during = while_pending(base, lambda regex=regex: grammar_request(base, regex))
        busy += during
        message = doc.get("error", {}).get("message", "") if isinstance(doc, dict) else ""
        attacks.append({"regex": regex, "status": status, "seconds_to_answer": round(seconds, 2),
                        "message": message[:200], "plain_requests_served_meanwhile": len(during)})
        print(f"round {r + 1}: {regex} -> {status} after {seconds:.1f} s; {len(during)} plain requests served "
              "meanwhile", flush=True)

    def median(xs: list[float]) -> float:
        return statistics.median(xs) if xs else float("nan")

    def p90(xs: list[float]) -> float | None:
        return round(statistics.quantiles(xs, n=10)[-1], 4) if len(xs) >= 10 else None

    idle_median = median(idle)
    return {"idle_median_s": round(idle_median, 4), "busy_median_s": round(median(busy), 4),
            "ratio": round(median(busy) / idle_median, 3),
            "recovery_median_s": round(median(recovery), 4), "recovery_ratio": round(median(recovery) / idle_median, 3),
            "idle_requests": len(idle), "busy_requests": len(busy), "recovery_requests": len(recovery),
            "idle_p90_s": p90(idle), "busy_p90_s": p90(busy), "recovery_p90_s": p90(recovery),
            "busy_max_s": round(max(busy), 4) if busy else None, "first_trivial_grammar_s": round(first_grammar, 2),
            "attacks": attacks}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", help="a running server (started with --set engine=outlines); default: start one")
    parser.add_argument("--rounds", type=int, default=4, help="idle/busy rounds (one pathological grammar each)")
    parser.add_argument("--requests", type=int, default=20, help="plain requests per idle phase")
    parser.add_argument("--grammar-seconds", type=float, default=5.0, help="the started server's grammar_seconds")
    parser.add_argument("--out", default=str(HERE / "results" / "serving_liveness.json"))
    args = parser.parse_args()
    proc = None
    base = args.base_url
    started = time.time()
    if base is None:
        proc, base = start_server(Path(tempfile.mkdtemp(prefix="anydecode-liveness-")), args.grammar_seconds)
        print(f"server up in {time.time() - started:.0f} s at {base}", flush=True)
    try:
        result = run(base.rstrip("/"), args.rounds, args.requests)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    result.update(base_url=args.base_url or "started", grammar_seconds=args.grammar_seconds, cpus=os.cpu_count())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "attacks"}, indent=1))
    print(f"plain-request median: idle {result['idle_median_s'] * 1000:.0f} ms, busy "
          f"{result['busy_median_s'] * 1000:.0f} ms (ratio {result['ratio']:.2f}; target: within 2x), while the "
          f"checker restarts {result['recovery_median_s'] * 1000:.0f} ms (ratio {result['recovery_ratio']:.2f}); "
          f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
