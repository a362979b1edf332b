"""Check anydecode's Triton kernels against their torch references on a GPU, then time both.

    python benchmarks/kernels_gpu.py                 # on a CUDA machine: check, time, print a table
    python benchmarks/kernels_gpu.py --peak-gbps 3350 --reps 50
    python benchmarks/kernels_gpu.py --cpu-smoke     # no GPU: tiny shapes, kernels run by Triton's interpreter
    python benchmarks/kernels_gpu.py --compile-check # no GPU needed: compile every kernel for sm_90 (catches
                                                     # what the interpreter does not: types, register spills)

Needs torch and triton only: when ``anydecode`` is not installed, the repository's ``kernels/`` folder is loaded
as ``anydecode.kernels`` by path. Inputs are random tensors built on the device (nothing is downloaded).

For every kernel and shape (B rows in {1, 8, 64, 256}, k drafts in {4, 8}, vocabulary V in {32k, 128k}) it first
runs the kernel and the reference on the same inputs and compares them (integer outputs: count of mismatches,
floats: largest difference), then times each with CUDA events (warm-up runs, then the median of ``--reps`` runs).
Columns: kernel and batched torch reference milliseconds, their ratio, the bytes the kernel must move divided by
its time, and that as a share of the card's peak bandwidth (looked up by device name, or ``--peak-gbps``), and for
masking the row-by-row code it replaces (what the vLLM processor does today) with its ratio. The bytes counted are
the kernel's minimum traffic: masking, the mask words plus one store per forbidden token plus the corrections;
chain verification, every logit once plus the logits and draft distribution of the row it samples from (top-k and
top-p re-read rows from L2, not counted); residual sampling, p and q; tree node, p and every child's q once;
diverse beam, the log-probabilities; warp, the logits read and the probabilities written. The targets of issue 15
are checked at the end: masking + reweighting at B=256, V=128k above 60% of peak and at least 5x the per-row
reference; chain verification at B=64, k=8, V=128k at least 3x the torch reference and above 50% of peak.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import importlib.util
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

#: peak memory bandwidth in GB/s by a substring of ``torch.cuda.get_device_name()`` (first match wins)
PEAK_GBPS = (("H200", 4800.0), ("H100 NVL", 3900.0), ("H100 PCIe", 2000.0), ("H100", 3350.0),
             ("A100-SXM4-80GB", 2039.0), ("A100", 1555.0), ("L40S", 864.0))


def load_kernels() -> Any:
    """``anydecode.kernels``, installed or loaded from this repository's ``kernels/`` folder."""
    try:
        return importlib.import_module("anydecode.kernels")
    except Exception:
        for name in [m for m in sys.modules if m == "anydecode" or m.startswith("anydecode.")]:
            del sys.modules[name]
    root = Path(__file__).resolve().parents[1] / "kernels"
    package = types.ModuleType("anydecode")
    package.__path__ = []
    sys.modules["anydecode"] = package
    spec = importlib.util.spec_from_file_location("anydecode.kernels", root / "__init__.py",
                                                  submodule_search_locations=[str(root)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["anydecode.kernels"] = module
    spec.loader.exec_module(module)
    return module


kernels = load_kernels()


@dataclasses.dataclass
class Case:
    """One timed configuration: the two implementations, how to compare them, and the kernel's bytes."""

    name: str
    shape: str
    run: Callable[[], Any]
    bytes: float
    compare: Callable[[Any, Any], str] | None = None
    per_row: Callable[[], Any] | None = None  # today's row-by-row code, where the issue compares with it
    reset: Callable[[], Any] | None = None  # restores inputs an in-place kernel changed


def timed(fn: Callable[[], Any], warmup: int, reps: int, cuda: bool) -> float:
    """Median milliseconds of ``fn()``: CUDA events on a GPU, the wall clock otherwise."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def in_mode(mode: str, fn: Callable[[], Any]) -> Callable[[], Any]:
    def call() -> Any:
        with kernels.use(mode):
            return fn()
    return call


def compare_ints(got: Any, want: Any) -> str:
    got, want = (got,) if torch.is_tensor(got) else got, (want,) if torch.is_tensor(want) else want
    bad = sum(int((a != b).sum()) for a, b in zip(got, want))
    total = sum(a.numel() for a in got)
    return f"{bad}/{total} int mismatches"


def compare_floats(got: torch.Tensor, want: torch.Tensor) -> str:
    same_inf = bool(torch.equal(torch.isinf(got), torch.isinf(want)))
    finite = torch.isfinite(want) & torch.isfinite(got)
    err = float((got[finite].float() - want[finite].float()).abs().max()) if bool(finite.any()) else 0.0
    return f"max |diff| {err:.1e}" + ("" if same_inf else ", -inf pattern differs")


# -- inputs --------------------------------------------------------------------------------------------------------
def masking_case(b: int, vocab: int, dev: torch.device, g: torch.Generator) -> Case:
    words = (vocab + 31) // 32
    original = torch.randn(b, vocab, device=dev, generator=g)
    logits = original.clone()
    bitmask = torch.randint(-2**31, 2**31 - 1, (b, words), dtype=torch.int32, device=dev, generator=g)
    per_row = 64  # explored children of an ASAp trie node
    indptr = torch.arange(b + 1, device=dev) * per_row
    tokens = torch.randint(0, vocab, (b * per_row,), device=dev, generator=g)
    values = torch.log(torch.rand(b * per_row, device=dev, generator=g))
    forbidden = vocab * b / 2  # random words: half the bits are clear
    nbytes = bitmask.numel() * 4 + forbidden * 4 + b * per_row * (8 + 4 + 2 * 4)
    from anydecode.kernels import masking

    def per_row_reference() -> Any:
        """Row by row, as the logits processors apply a transform today (mask, then add the corrections)."""
        for r in range(b):
            lo, hi = r * per_row, (r + 1) * per_row
            row = torch.where(masking.unpack_bitmask(bitmask[r: r + 1], vocab)[0], logits[r], float("-inf"))
            row.index_put_((tokens[lo:hi],), values[lo:hi], accumulate=True)
            logits[r] = row
        return logits

    def check(got: Any, want: Any) -> str:
        return compare_floats(got, want)

    return Case("masking + ASAp reweighting", f"B={b} V={vocab}", run=lambda: kernels.apply_token_masks(
        logits, bitmask, None, indptr, tokens, values), bytes=nbytes, compare=check, per_row=per_row_reference,
        reset=lambda: logits.copy_(original))


def chain_case(b: int, k: int, vocab: int, dev: torch.device, g: torch.Generator, truncate: bool) -> Case:
    target = torch.randn(b, k + 1, vocab, device=dev, generator=g) * 2
    draft_logits = target[:, :k] + 0.5 * torch.randn(b, k, vocab, device=dev, generator=g)
    q = torch.softmax(draft_logits, dim=-1)
    drafts = torch.multinomial(q.reshape(-1, vocab), 1, generator=g).reshape(b, k)
    settings = dict(temperature=1.0, top_k=50, top_p=0.9) if truncate else dict(temperature=1.0)
    seeds = torch.arange(b, device=dev) + 17
    nbytes = target.numel() * 4 + 2 * b * vocab * 4 + q.numel() / vocab * 4
    label = "chain verification" + (" (top-k 50, top-p 0.9)" if truncate else "")
    return Case(label, f"B={b} k={k} V={vocab}", run=lambda: kernels.verify_chain(
        target, drafts, q, seeds=seeds, offsets=5, **settings), bytes=nbytes, compare=compare_ints)


def residual_case(b: int, vocab: int, dev: torch.device, g: torch.Generator) -> Case:
    p = torch.softmax(torch.randn(b, vocab, device=dev, generator=g) * 2, dim=-1)
    q = torch.softmax(torch.randn(b, vocab, device=dev, generator=g) * 2, dim=-1)
    seeds = torch.arange(b, device=dev)
    return Case("residual sampling", f"B={b} V={vocab}", run=lambda: kernels.sample_residual(p, q, seeds=seeds),
                bytes=2 * p.numel() * 4, compare=compare_ints)


def tree_case(b: int, children: int, vocab: int, dev: torch.device, g: torch.Generator) -> Case:
    p = torch.softmax(torch.randn(b, vocab, device=dev, generator=g) * 2, dim=-1)
    q = torch.softmax(torch.randn(b, children, vocab, device=dev, generator=g) * 2, dim=-1)
    tokens = torch.multinomial(q.reshape(-1, vocab), 1, generator=g).reshape(b, children)
    seeds = torch.arange(b, device=dev)
    return Case("tree node (SpecInfer)", f"B={b} children={children} V={vocab}", run=lambda: kernels.verify_tree_node(
        p, tokens, q, seeds=seeds), bytes=(p.numel() + q.numel()) * 4, compare=compare_ints)


def beam_case(prompts: int, beams: int, vocab: int, dev: torch.device, g: torch.Generator) -> Case:
    groups = max(1, beams // 2)
    logp = torch.log_softmax(torch.randn(prompts * beams, vocab, device=dev, generator=g), dim=-1)
    scores = torch.randn(prompts * beams, device=dev, generator=g)
    return Case("diverse beam step", f"prompts={prompts} beams={beams} groups={groups} V={vocab}",
                run=lambda: kernels.diverse_beam_step(logp, scores, num_beams=beams, groups=groups, penalty=0.5,
                                                      keep=4, eos=[2]), bytes=logp.numel() * 4, compare=compare_ints)


def warp_case(b: int, vocab: int, dev: torch.device, g: torch.Generator, truncate: bool) -> Case:
    logits = torch.randn(b, vocab, device=dev, generator=g) * 2
    settings = dict(temperature=0.8, top_k=50, top_p=0.9, min_p=0.01) if truncate else dict(temperature=0.8)
    label = "warp" + (" (top-k, top-p, min-p)" if truncate else " (temperature)")
    return Case(label, f"B={b} V={vocab}", run=lambda: kernels.warp_probs(logits, **settings),
                bytes=2 * logits.numel() * 4, compare=compare_floats)


def cases(dev: torch.device, batches: list[int], drafts: list[int], vocabs: list[int]):
    """Builders of every timed configuration, in table order (each builds its inputs when called)."""
    g = torch.Generator(device=dev).manual_seed(0)
    for vocab in vocabs:
        yield from (functools.partial(masking_case, b, vocab, dev, g) for b in batches)
        yield from (functools.partial(chain_case, b, k, vocab, dev, g, False) for b in batches for k in drafts)
        yield from (functools.partial(chain_case, b, drafts[-1], vocab, dev, g, True) for b in batches)
        yield from (functools.partial(residual_case, b, vocab, dev, g) for b in batches)
        yield from (functools.partial(tree_case, b, max(2, drafts[0]), vocab, dev, g) for b in batches)
        yield from (functools.partial(beam_case, b, k, vocab, dev, g) for b in batches for k in drafts)
        yield from (functools.partial(warp_case, b, vocab, dev, g, t) for b in batches for t in (False, True))


def peak_gbps(override: float | None) -> float | None:
    if override:
        return override
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((gbps for key, gbps in PEAK_GBPS if key in name), None)


def compile_check() -> int:
    """Compile every kernel for sm_90 without a GPU and report registers and spills (ptxas -v)."""
    import os
    import re
    import subprocess
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    jit = {name: importlib.import_module(f"anydecode.kernels.jit.{name}")
           for name in ("verify", "masking", "residual", "diverse_beam", "warp", "rng")}
    target = GPUTarget("cuda", 90, 32)
    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    ptxas = next((str(bin_dir / n) for n in ("ptxas-blackwell", "ptxas") if (bin_dir / n).exists()), None)
    i64, i32, f32 = "*i64", "i32", "*fp32"
    chain = dict(logits_ptr=f32, stride_lb=i32, stride_lj=i32, draft_ptr=i64, stride_db=i32, q_ptr=f32, stride_qb=i32,
                 stride_qj=i32, seed_ptr=i64, row_ptr=i64, offset_ptr=i64, length_ptr=i64, inv_t_ptr=f32, top_k_ptr=i64,
                 top_p_ptr=f32, min_p_ptr=f32, stat_f_ptr=f32, stat_i_ptr=i64, counter_ptr="*i32", out_n_ptr=i64,
                 out_token_ptr=i64, V=i32, K=i32)
    mask = dict(logits_ptr=f32, stride_row=i32, n_rows=i32, index_ptr=i64, mask_ptr="*i32", stride_mask=i32,
                n_words=i32, indptr_ptr=i64, token_ptr=i64, value_ptr=f32, n_entries=i32, V=i32)
    residual = dict(p_ptr=f32, stride_p=i32, q_ptr=f32, stride_q=i32, seed_ptr=i64, row_ptr=i64, pos_ptr=i64,
                    out_ptr=i64, V=i32)
    tree = dict(p_ptr=f32, stride_p=i32, tok_ptr=i64, stride_t=i32, q_ptr=f32, stride_qn=i32, stride_qc=i32,
                count_ptr=i64, seed_ptr=i64, row_ptr=i64, pos_ptr=i64, child_ptr=i64, out_ptr=i64, V=i32, C=i32)
    beam = dict(logp_ptr=f32, stride_row=i32, score_ptr=f32, eos_ptr=i64, n_eos=i32, done_ptr="*i8", chosen_ptr=i64,
                out_score_ptr=f32, out_beam_ptr=i64, out_token_ptr=i64, V=i32, width=i32, groups=i32, size=i32,
                keep=i32, penalty="fp32", pad=i32)
    warp = dict(logits_ptr=f32, stride_row=i32, out_ptr=f32, stride_out=i32, inv_t_ptr=f32, top_k_ptr=i64,
                top_p_ptr=f32, min_p_ptr=f32, m_ptr=f32, thr_ptr=i64, cut_ptr=i64, z_ptr=f32, n=i32)
    bits = dict(seed_ptr=i64, row_ptr=i64, pos_ptr=i64, lane_ptr=i64, bits_ptr=i64, uniform_ptr=f32, exp_ptr=f32,
                coin_ptr=f32, n=i32)
    jobs = [
        ("chain verification", jit["verify"]._chain_kernel, chain, dict(HAS_Q=True, KP=16, BLOCK=1024, RBLOCK=256), 8),
        ("chain verification, one-hot", jit["verify"]._chain_kernel, chain,
         dict(HAS_Q=False, KP=16, BLOCK=1024, RBLOCK=256), 8),
        ("masking", jit["masking"]._mask_kernel, mask, dict(HAS_INDEX=True, HAS_CORR=True, WORDS=128, CHUNK=32), 4),
        ("masking bf16", jit["masking"]._mask_kernel, {**mask, "logits_ptr": "*bf16"},
         dict(HAS_INDEX=False, HAS_CORR=False, WORDS=128, CHUNK=32), 4),
        ("residual", jit["residual"]._residual_kernel, residual, dict(BLOCK=1024), 8),
        ("tree node", jit["residual"]._tree_kernel, tree, dict(HAS_Q=True, CP=16, BLOCK=1024), 8),
        ("tree node, one-hot", jit["residual"]._tree_kernel, tree, dict(HAS_Q=False, CP=16, BLOCK=1024), 8),
        ("diverse beam", jit["diverse_beam"]._beam_step_kernel, beam, dict(KP=16, EP=16, BLOCK=1024), 8),
        ("diverse beam fp64", jit["diverse_beam"]._beam_step_kernel,
         {**beam, "logp_ptr": "*fp64", "score_ptr": "*fp64", "out_score_ptr": "*fp64"},
         dict(KP=16, EP=16, BLOCK=1024), 8),
        ("warp", jit["warp"]._warp_probs_kernel, warp, dict(BLOCK=1024, RBLOCK=256), 8),
        ("generator", jit["rng"]._bits_kernel, bits, dict(BLOCK=1024), 4),
    ]
    failed = 0
    for name, fn, signature, constexprs, warps in jobs:
        signature = {**signature, **{c: "constexpr" for c in constexprs}}
        started = time.perf_counter()
        try:
            compiled = triton.compile(ASTSource(fn, signature, constexprs), target=target,
                                      options={"num_warps": warps})
        except Exception as exc:  # report every kernel, then fail
            failed += 1
            print(f"{name:32s} FAILED: {exc}")
            continue
        usage = ""
        if ptxas:
            with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
                f.write(compiled.asm["ptx"])
            out = subprocess.run([ptxas, "-v", "--gpu-name=sm_90a", f.name, "-o", os.devnull], capture_output=True,
                                 text=True)
            os.unlink(f.name)
            regs = re.findall(r"Used (\d+) registers", out.stdout + out.stderr)
            spills = re.findall(r"(\d+) bytes spill stores", out.stdout + out.stderr)
            usage = f"registers {regs[0] if regs else '?'}, spill stores {spills[0] if spills else '?'} bytes"
        print(f"{name:32s} compiled in {time.perf_counter() - started:5.1f} s  {usage}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on CPU through Triton's interpreter")
    parser.add_argument("--compile-check", action="store_true", help="compile every kernel for sm_90 and exit")
    parser.add_argument("--peak-gbps", type=float, default=None, help="peak memory bandwidth (default: by name)")
    parser.add_argument("--reps", type=int, default=30, help="timed runs per measurement (median reported)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batches", default=None, help="rows B, comma-separated (default 1,8,64,256)")
    parser.add_argument("--drafts", default=None, help="drafts k (and beams per prompt), default 4,8")
    parser.add_argument("--vocabs", default=None, help="vocabulary sizes, default 32768,131072")
    args = parser.parse_args(argv)
    if args.compile_check:
        return compile_check()
    cuda = torch.cuda.is_available() and not args.cpu_smoke
    if not cuda and not args.cpu_smoke:
        print("no CUDA device: run with --cpu-smoke (interpreted kernels on CPU) or --compile-check")
        return 2
    dev = torch.device("cuda" if cuda else "cpu")
    smoke = args.cpu_smoke
    batches = [int(x) for x in (args.batches or ("1,3" if smoke else "1,8,64,256")).split(",")]
    drafts = [int(x) for x in (args.drafts or ("1,4" if smoke else "4,8")).split(",")]
    vocabs = [int(x) for x in (args.vocabs or ("100,257" if smoke else "32768,131072")).split(",")]
    reps, warmup = (1, 0) if smoke else (args.reps, args.warmup)
    peak = peak_gbps(args.peak_gbps) if cuda else None
    name = torch.cuda.get_device_name() if cuda else "CPU (Triton interpreter)"
    print(f"device: {name}; peak bandwidth: {f'{peak:.0f} GB/s' if peak else 'unknown (pass --peak-gbps)'}; "
          f"median of {reps} runs after {warmup} warm-up runs")
    header = f"{'kernel':40s} {'shape':34s} {'kernel ms':>10s} {'ref ms':>10s} {'ratio':>7s} {'GB/s':>8s} " \
             f"{'% peak':>7s} {'per-row ms':>10s} {'ratio':>7s}  check"
    print(header)
    print("-" * len(header))
    results: dict[tuple[str, str], tuple[float, float, float]] = {}
    failures = 0
    for make in cases(dev, batches, drafts, vocabs):
        case = make()
        kernel_fn = in_mode("triton", case.run)
        reference_fn = in_mode("reference", case.run)
        if case.reset:
            case.reset()
        got = kernel_fn()
        got = got.clone() if torch.is_tensor(got) else got
        if case.reset:
            case.reset()
        want = reference_fn()
        check = case.compare(got, want) if case.compare else ""
        if "mismatches" in check and not check.startswith("0/"):
            bad, total = (int(x) for x in check.split()[0].split("/"))
            failures += bad > max(1, total // 1000)  # near-ties of the race may differ by one ulp; more is a bug
        if "pattern differs" in check:
            failures += 1
        t_kernel = timed(kernel_fn, warmup, reps, cuda)
        t_ref = timed(reference_fn, min(warmup, 1), max(1, reps // 3), cuda)
        gbps = case.bytes / (t_kernel * 1e-3) / 1e9
        share = f"{100 * gbps / peak:6.1f}%" if peak else "    n/a"
        per_row = ""
        t_base = t_ref
        if case.per_row is not None:
            t_base = timed(case.per_row, min(warmup, 1), max(1, reps // 3), cuda)
            per_row = f"{t_base:10.3f} {t_base / t_kernel:6.1f}x"
        print(f"{case.name:40s} {case.shape:34s} {t_kernel:10.3f} {t_ref:10.3f} {t_ref / t_kernel:6.1f}x "
              f"{gbps:8.1f} {share} {per_row:18s}  {check}", flush=True)
        results[(case.name, case.shape)] = (t_kernel, t_base, gbps)
        del case, got, want
        if cuda:
            torch.cuda.empty_cache()
    print()
    for label, key, min_ratio, min_share in (
            ("masking + reweighting, B=256, V=128k", ("masking + ASAp reweighting", "B=256 V=131072"), 5.0, 0.60),
            ("chain verification, B=64, k=8, V=128k", ("chain verification", "B=64 k=8 V=131072"), 3.0, 0.50)):
        if key not in results:
            continue
        t_kernel, t_base, gbps = results[key]
        ok_ratio = t_base / t_kernel >= min_ratio
        ok_share = peak is not None and gbps / peak >= min_share
        print(f"target {label}: {t_base / t_kernel:.1f}x (>= {min_ratio:.0f}x: {'met' if ok_ratio else 'NOT met'}), "
              f"{100 * gbps / peak if peak else float('nan'):.0f}% of peak (>= {100 * min_share:.0f}%: "
              f"{'met' if ok_share else 'NOT met'})")
    print(f"correctness: {'all kernels agree with their references' if not failures else f'{failures} FAILED'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
