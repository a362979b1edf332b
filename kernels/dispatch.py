"""The dispatcher: every kernel's public entry point, choosing the Triton kernel or its torch reference.

Rule (mode ``"auto"``, the default): the Triton kernel when the tensors are on a CUDA device and triton imports;
the torch reference otherwise (CPU, MPS, no triton). Both have the same signature and semantics, so a caller never
needs to know which ran. :func:`use` forces a choice for a block of code:

    with kernels.use("reference"):        # torch everywhere (e.g. to compare on a GPU)
        ...
    with kernels.use("triton", block=64): # the kernels even on CPU tensors, run by Triton's interpreter
        ...

**Interpreted mode.** Triton decides at *decoration* time whether ``@triton.jit`` builds a compiled function or
an interpreted one (``triton.runtime.jit.jit`` reads ``triton.knobs.runtime.interpret``, which reads the
``TRITON_INTERPRET`` environment variable unless set in code). Setting the variable for a whole pytest process
would also turn every kernel vLLM defines into an interpreted one. So the kernels' source files in
``kernels/jit/`` are imported twice, under two module names: ``anydecode.kernels.jit.<name>`` normally (compiled,
for CUDA) and ``anydecode.kernels.jit_interpreted.<name>`` (a package whose path is the same folder) with the knob
switched on only while those modules are imported and while an interpreted kernel runs. Nothing else in the
process sees the switch. Interpreted kernels read and write CPU tensors; they are slow (numpy per block) and
meant for tests and the GPU script's ``--cpu-smoke`` mode.

``block`` (a power of two) overrides the kernels' block size: tests use small blocks so that several blocks, and
a vocabulary that is not a multiple of the block, are exercised on small vocabularies.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import importlib
import importlib.util
import os
import sys
import threading
import types
from collections.abc import Iterator
from typing import Any

import torch

MODES = ("auto", "triton", "reference")
_JIT_PACKAGE = "anydecode.kernels.jit"
_INTERPRETED_PACKAGE = "anydecode.kernels.jit_interpreted"


@dataclasses.dataclass(frozen=True)
class _Choice:
    mode: str = "auto"
    block: int | None = None


_AUTO = _Choice()
_choice: contextvars.ContextVar[_Choice | None] = contextvars.ContextVar("anydecode_kernels_choice", default=None)
_import_lock = threading.RLock()


@contextlib.contextmanager
def use(mode: str, block: int | None = None) -> Iterator[None]:
    """Force ``"triton"`` (interpreted on CPU tensors), ``"reference"`` or ``"auto"`` inside the block."""
    if mode not in MODES:
        raise ValueError(f"kernel mode {mode!r} is not one of {', '.join(MODES)}")
    if block is not None and (block < 16 or block & (block - 1)):
        raise ValueError(f"block={block} must be a power of two >= 16")
    token = _choice.set(_Choice(mode, block))
    try:
        yield
    finally:
        _choice.reset(token)


def mode() -> str:
    """The mode in force: ``"auto"`` unless inside :func:`use`."""
    return (_choice.get() or _AUTO).mode


def triton_available() -> bool:
    """Whether triton is installed (checked without importing it)."""
    return importlib.util.find_spec("triton") is not None


def backend(*tensors: torch.Tensor | None) -> str:
    """``"triton"`` or ``"reference"`` for these tensors under the mode in force."""
    forced = mode()
    if forced != "auto":
        return forced
    devices = [t.device.type for t in tensors if t is not None]
    if devices and all(d == "cuda" for d in devices) and triton_available() and torch.cuda.is_available():
        return "triton"
    return "reference"


def block_size(vocab: int, default: int = 4096) -> int:
    """The block size of a kernel over ``vocab`` columns: the forced one, else ``default`` capped at the next power
    of two of ``vocab`` (and at least 16)."""
    forced = (_choice.get() or _AUTO).block
    if forced is not None:
        return forced
    return max(16, min(default, 1 << max(vocab - 1, 0).bit_length()))


# -- loading the Triton code ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def interpreting() -> Iterator[None]:
    """Run Triton's interpreter inside the block, without touching the rest of the process for longer.

    Two switches: the interpreter knob (read when ``@triton.jit`` decorates and by constexpr functions at run
    time), and ``JITFunction.__call__``. The second is needed because ``triton.language``'s own library
    (``tl.zeros``, ``tl.sum``, ``tl.cumsum``...) was decorated as compiled functions when triton was imported
    without the knob; the real interpreter would have decorated them as interpreted ones. Inside the block, calling
    such a function from an interpreted kernel interprets it (language patched for the call, then restored);
    outside, the method is the original, which only ever raised (compiled kernels never call it).
    """
    import triton
    from triton.runtime.jit import JITFunction

    with _import_lock:
        runtime = triton.knobs.runtime
        missing = object()
        saved_knob = runtime.__dict__.get("interpret", missing)
        saved_call = JITFunction.__dict__["__call__"]
        runtime.__dict__["interpret"] = True
        JITFunction.__call__ = _interpreted_call  # type: ignore[method-assign]
        try:
            yield
        finally:
            JITFunction.__call__ = saved_call  # type: ignore[method-assign]
            if saved_knob is missing:
                runtime.__dict__.pop("interpret", None)
            else:
                runtime.__dict__["interpret"] = saved_knob


_rewritten: dict[Any, Any] = {}


def _interpreted_call(self: Any, *args: Any, **kwargs: Any) -> Any:
    """``JITFunction.__call__`` while interpreting: run the function's source through the interpreter."""
    from triton.runtime.interpreter import InterpretedFunction, _patch_lang

    fn = _rewritten.get(self.fn)
    if fn is None:
        fn = _rewritten[self.fn] = InterpretedFunction(self.fn).rewrite()
    scope = _patch_lang(self.fn)
    try:
        return fn(*args, **kwargs)
    finally:
        scope.restore()


def _interpreted_package() -> types.ModuleType:
    package = sys.modules.get(_INTERPRETED_PACKAGE)
    if package is None:
        package = types.ModuleType(_INTERPRETED_PACKAGE, "kernels/jit/ decorated with Triton's interpreter on")
        package.__path__ = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "jit")]
        package.__package__ = _INTERPRETED_PACKAGE
        sys.modules[_INTERPRETED_PACKAGE] = package
    return package


def jit_module(name: str, interpreted: bool) -> Any:
    """The module ``kernels/jit/<name>.py``, compiled flavour or interpreted flavour."""
    if not interpreted:
        return importlib.import_module(f"{_JIT_PACKAGE}.{name}")
    with _import_lock:
        _interpreted_package()
        full = f"{_INTERPRETED_PACKAGE}.{name}"
        if full in sys.modules:
            return sys.modules[full]
        with interpreting():
            return importlib.import_module(full)


_launches: dict[str, int] = {}


def launches() -> dict[str, int]:
    """How many times each Triton kernel (``"<module>.<entry>"``) has run in this process, compiled or interpreted:
    lets a caller confirm the kernels, not the references, did the work."""
    with _import_lock:
        return dict(_launches)


def run_kernel(name: str, device: torch.device, *args: Any, entry: str = "launch", **kwargs: Any) -> Any:
    """Call ``entry(*args, **kwargs)`` of ``kernels/jit/<name>.py``: interpreted for tensors off CUDA."""
    interpreted = device.type != "cuda"
    with _import_lock:
        _launches[f"{name}.{entry}"] = _launches.get(f"{name}.{entry}", 0) + 1
    launch = getattr(jit_module(name, interpreted), entry)
    if not interpreted:
        return launch(*args, **kwargs)
    with interpreting():
        return launch(*args, **kwargs)


# -- the kernels' public entry points ------------------------------------------------------------------------------
def warp_probs(logits: torch.Tensor, temperature: torch.Tensor | float = 1.0, top_k: torch.Tensor | int = 0,
               top_p: torch.Tensor | float = 1.0, min_p: torch.Tensor | float = 0.0) -> torch.Tensor:
    """The sampler's warped distribution of every row of ``logits`` ``(n, V)``: float32 ``(n, V)``.

    Settings are scalars or ``(n,)`` tensors (temperature 0 is greedy: one-hot of the first argmax); semantics in
    :mod:`anydecode.kernels.warp`.
    """
    from . import warp
    from .verify import check_settings

    if logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError(f"logits must be a float tensor (rows, vocab); got {logits.dtype} {tuple(logits.shape)}")
    n, vocab = logits.shape
    dev = logits.device
    check_settings(temperature, top_p, min_p)
    temp = warp.as_rows(temperature, n, torch.float32, dev, "temperature")
    k = warp.as_rows(top_k, n, torch.int64, dev, "top_k")
    p = warp.top_p_rows(top_p, n, dev)
    mp = warp.as_rows(min_p, n, torch.float32, dev, "min_p")
    if backend(logits) == "reference":
        return warp.warp_probs_reference(logits, temp, k, p, mp)
    rows = logits if logits.stride(-1) == 1 else logits.contiguous()
    probs, _ = run_kernel("warp", dev, rows, warp.inverse_temperature(temp), k, p, mp, block=block_size(vocab, 1024))
    return probs


def apply_token_masks(logits: torch.Tensor, bitmask: torch.Tensor, indices: torch.Tensor | None = None,
                      indptr: torch.Tensor | None = None, tokens: torch.Tensor | None = None,
                      values: torch.Tensor | None = None) -> torch.Tensor:
    """Grammar masks and ASAp corrections for every masked row, in place; returns ``logits``.

    ``logits`` ``(B, V)``; ``bitmask`` ``(R, ceil(V / 32))`` int32 (bit ``i % 32`` of word ``i // 32`` allows token
    ``i``); ``indices`` ``(R,)``: the logits row of each bitmask row (default ``0..R-1``); ``indptr`` ``(R + 1,)``,
    ``tokens`` and ``values`` ``(N,)``: CSR list of log-corrections added to row ``r``'s tokens
    ``tokens[indptr[r]:indptr[r + 1]]``. Semantics in :mod:`anydecode.kernels.masking`.
    """
    from . import masking

    args = masking.mask_args(logits, bitmask, indices, indptr, tokens, values)
    if backend(logits, bitmask) == "reference":
        return masking.apply_masks_reference(args)
    return run_kernel("masking", logits.device, args, block=block_size(logits.shape[1], 4096))


def verify_chain(target_logits: torch.Tensor, draft_tokens: torch.Tensor, draft_probs: torch.Tensor | None = None,
                 *, seeds: torch.Tensor | int, offsets: torch.Tensor | int | None = None,
                 lengths: torch.Tensor | int | None = None, temperature: torch.Tensor | float = 1.0,
                 top_k: torch.Tensor | int = 0, top_p: torch.Tensor | float = 1.0,
                 min_p: torch.Tensor | float = 0.0,
                 rows: torch.Tensor | int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Speculative chain verification of a batch; returns ``(accepted, next_token)``, int64 ``(B,)``.

    ``target_logits`` ``(B, k + 1, V)`` (raw: warped inside with the per-row ``temperature``, ``top_k``, ``top_p``,
    ``min_p``; temperature 0 rows are greedy), ``draft_tokens`` ``(B, k)``, ``draft_probs`` ``(B, k, V)``
    (the distributions the drafts were drawn from) or None for deterministic drafts, ``lengths`` ``(B,)`` drafts
    per row (default ``k``), random streams ``(seeds[b], rows[b], offsets[b] + j)`` (``rows`` default ``0..B-1``).
    Semantics in :mod:`anydecode.kernels.verify`.
    """
    from . import verify

    args = verify.chain_args(target_logits, draft_tokens, draft_probs, seeds, offsets, lengths, temperature, top_k,
                             top_p, min_p, rows)
    if backend(target_logits, draft_probs) == "reference":
        return verify.verify_chain_reference(args)
    return run_kernel("verify", target_logits.device, args, block=block_size(target_logits.shape[-1], 1024))


def sample_tokens(logits: torch.Tensor, *, seeds: torch.Tensor | int, offsets: torch.Tensor | int | None = None,
                  temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
                  rows: torch.Tensor | int | None = None) -> torch.Tensor:
    """One sampled token per row of raw ``logits`` (``(N, V)``), int64 ``(N,)``: exactly the token
    :func:`verify_chain` draws for a row without drafts (its bonus token), on the stream ``(seeds[i], rows[i],
    offsets[i])``, with one sampling setting for every row (``temperature > 0``). Plain sampling steps of the
    speculative loop and coupled verification (``verify_chain_coupled``) call this."""
    from . import verify

    if not float(temperature) > 0:
        raise ValueError(f"temperature must be > 0 to sample (0 is greedy: take the argmax); got {temperature}")
    if logits.dim() != 2:
        raise ValueError(f"logits must be (rows, vocab); got {tuple(logits.shape)}")
    if backend(logits) == "reference":
        return verify.sample_reference(logits, seeds, offsets, temperature, top_k, top_p, min_p, rows)
    empty = torch.zeros(logits.shape[0], 0, dtype=torch.int64, device=logits.device)
    return verify_chain(logits.unsqueeze(1), empty, None, seeds=seeds, offsets=offsets, lengths=0,
                        temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, rows=rows)[1]


def verify_chain_greedy(target_logits: torch.Tensor, draft_tokens: torch.Tensor,
                        lengths: torch.Tensor | int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy chain verification: keep drafts while they equal the target's argmax; ``(accepted, next_token)``."""
    if backend(target_logits) == "reference":
        from . import verify

        return verify.verify_chain_greedy_reference(target_logits, draft_tokens, lengths)
    return verify_chain(target_logits, draft_tokens, None, seeds=0, lengths=lengths, temperature=0.0)


def sample_residual(p: torch.Tensor, q: torch.Tensor, *, seeds: torch.Tensor | int,
                    positions: torch.Tensor | int | None = None,
                    rows: torch.Tensor | int | None = None) -> torch.Tensor:
    """One token per row of ``normalise(max(0, p - q))`` (``p``, ``q``: ``(N, V)`` probabilities), int64 ``(N,)``.

    Random stream ``(seeds[r], rows[r], positions[r])``; semantics in :mod:`anydecode.kernels.residual`.
    """
    from . import residual

    args = residual.residual_args(p, q, seeds, positions, rows)
    if backend(p, q) == "reference":
        return residual.sample_residual_reference(args)
    return run_kernel("residual", p.device, args, entry="launch_residual", block=block_size(p.shape[1], 1024))


def verify_tree_node(p: torch.Tensor, tokens: torch.Tensor, q: torch.Tensor | None = None, *,
                     seeds: torch.Tensor | int, counts: torch.Tensor | int | None = None,
                     positions: torch.Tensor | int | None = None,
                     rows: torch.Tensor | int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One tree-verification node per row (SpecInfer): ``(child, token)``, int64 ``(N,)``.

    ``p`` ``(N, V)`` target probabilities at the node, ``tokens`` ``(N, C)`` its children in trial order,
    ``q`` ``(N, C, V)`` their draft distributions or None (one-hot), ``counts`` ``(N,)`` children per row.
    ``child`` is the accepted child (-1 if none) and ``token`` its token or the draw from the final residual.
    """
    from . import residual

    args = residual.tree_args(p, tokens, q, seeds, counts, positions, rows)
    if backend(p, q) == "reference":
        return residual.verify_tree_node_reference(args)
    return run_kernel("residual", p.device, args, entry="launch_tree", block=block_size(p.shape[1], 1024))


def diverse_beam_step(logprobs: torch.Tensor, beam_scores: torch.Tensor, *, num_beams: int, groups: int,
                      penalty: float, keep: int, eos: torch.Tensor | list[int] | tuple[int, ...] = (),
                      done: torch.Tensor | None = None,
                      pad: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of diverse beam search (Hamming penalty, groups in order): ``(scores, beams, tokens)``, each
    ``(prompts, groups, keep)``, best first. ``logprobs`` ``(prompts * num_beams, V)`` (log-softmax of the
    logits), ``beam_scores`` ``(prompts * num_beams,)``; semantics in :mod:`anydecode.kernels.diverse_beam`."""
    from . import diverse_beam

    args = diverse_beam.beam_step_args(logprobs, beam_scores, num_beams, groups, penalty, keep, eos, done, pad)
    if backend(logprobs, beam_scores) == "reference":
        return diverse_beam.beam_step_reference(args)
    return run_kernel("diverse_beam", logprobs.device, args, block=block_size(logprobs.shape[1], 1024))
