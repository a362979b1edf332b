"""A CPU linear layer for small token blocks: oneDNN's matmul over the layer's own dense fp32 weights.

Why: speculative verification runs a transformer over blocks of 2-16 tokens. On x86 CPUs the matmul behind
``torch.nn.functional.linear`` (MKL) is memory-bound and slow for such blocks: a block of a few tokens costs well
over a one-token step, so verifying a draft costs more than the step it saves. oneDNN's matmul reads the same
weights in place (no copy, no repacking) and keeps a block's cost close to a one-token step's (figures in
docs/benchmarks.md, "The CPU kernel's forward costs").

``torch.ops.mkldnn._linear_pointwise`` is a private operator (PyTorch's inductor emits it), so it is used only on
the PyTorch releases it was checked on (``TESTED_TORCH``), on x86-64, for fp32 CPU tensors without autograd; anything
else takes ``torch.nn.functional.linear``. The reference is ``torch.nn.functional.linear``: results agree to
float32 rounding, not bit for bit, as MKL itself differs
between 1-row and multi-row blocks.

:func:`fast_linear` swaps the ``forward`` of a model's ``nn.Linear`` modules for the duration of a ``with`` block and
restores them after it, so a model object shared with other code is left as it was found.
"""

from __future__ import annotations

import contextlib
import platform
import weakref
from collections.abc import Iterator
from typing import Any

import torch

TESTED_TORCH = ("2.13",)


def torch_release(version: str | None = None) -> str:
    return ".".join((version or torch.__version__).split("+")[0].split(".")[:2])


def available(version: str | None = None) -> bool:
    """Whether this process may use the oneDNN linear (the tested PyTorch release, x86-64, oneDNN built in)."""
    return (torch_release(version) in TESTED_TORCH and platform.machine().lower() in ("x86_64", "amd64")
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def reference_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return torch.nn.functional.linear(x, weight, bias)


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` through oneDNN; the caller checks :func:`eligible` first."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def eligible(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and weight.device.type == "cpu" and weight.layout == torch.strided and weight.is_contiguous()
            and not torch.is_grad_enabled())


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The dispatcher: oneDNN where :func:`available` and :func:`eligible`, else the reference."""
    if available() and eligible(x, weight):
        return onednn_linear(x, weight, bias)
    return reference_linear(x, weight, bias)


def linear_modules(model: torch.nn.Module) -> list[torch.nn.Linear]:
    """Plain ``nn.Linear`` layers with fp32 CPU weights whose ``forward`` nobody has replaced or hooked (accelerate
    hooks, quantisation wrappers, pruning and weight norm, subclasses keep their own)."""
    return [m for m in model.modules()
            if type(m) is torch.nn.Linear and "forward" not in m.__dict__ and "weight" in m._parameters
            and not m._forward_pre_hooks and not m._forward_hooks  # pruning, weight norm: weights set per call
            and m.weight.device.type == "cpu" and m.weight.dtype == torch.float32]


#: each layer's oneDNN forward with the weights it was made for, made once (a swap runs around every forward pass)
_FORWARDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _eligible_weights(weight: torch.Tensor | None, bias: torch.Tensor | None) -> bool:
    return (weight is not None and weight.device.type == "cpu" and weight.dtype == torch.float32
            and weight.layout == torch.strided and weight.is_contiguous()
            and (bias is None or (bias.device.type == "cpu" and bias.dtype == torch.float32)))


def _forward_of(module: torch.nn.Linear) -> Any:
    """The layer's oneDNN forward, or None where its weights are not eligible (dtype, device, layout), checked at
    every swap. Per call only what may differ between threads is checked (grad mode, the input's dtype): another
    thread may run the same model while it is swapped. The cache is keyed weakly on the layer and its value refers to
    the weights weakly too: a value that referred to its key would keep every model alive, and one that held the
    weights would keep replaced weights alive."""
    params = module._parameters
    weight, bias = params.get("weight"), params.get("bias")
    if not _eligible_weights(weight, bias):
        return None
    cached = _FORWARDS.get(module)
    if cached is not None and cached[0]() is weight and (cached[1]() if cached[1] else None) is bias:
        return cached[2]
    op = torch.ops.mkldnn._linear_pointwise
    linear = torch.nn.functional.linear
    weight_ref = weakref.ref(weight)
    bias_ref = weakref.ref(bias) if bias is not None else None

    def forward(x: torch.Tensor) -> torch.Tensor:
        w = weight_ref()
        b = bias_ref() if bias_ref is not None else None
        if x.dtype is not torch.float32 or torch.is_grad_enabled():
            return linear(x, w, b)
        return op(x, w, b, "none", [], "")
    forward._anydecode_fast_linear = True  # type: ignore[attr-defined]
    _FORWARDS[module] = (weight_ref, bias_ref, forward)
    return forward


@contextlib.contextmanager
def fast_linear(model: torch.nn.Module, enabled: bool = True,
                modules: list[torch.nn.Linear] | None = None) -> Iterator[int]:
    """Run ``model``'s plain linear layers (or the given ``modules``, from :func:`linear_modules`) through oneDNN
    inside the block; yields how many layers were switched (0 where disabled, not :func:`available`, or where
    autograd or CPU autocast is on: the oneDNN forward takes fp32 inputs without a graph)."""
    if not (enabled and available()) or torch.is_grad_enabled() or torch.is_autocast_enabled("cpu"):
        modules = []
    elif modules is None:
        modules = linear_modules(model)
    switched = []
    for m in modules:
        forward = _forward_of(m) if "forward" not in m.__dict__ else None
        if forward is not None:
            # straight into the instance dict: nn.Module.__setattr__ costs more than the swap itself, and a
            # layer's own ``forward`` attribute shadows the class method the same way
            m.__dict__["forward"] = forward
            switched.append(m)
    try:
        yield len(switched)
    finally:
        for m in switched:
            if getattr(m.__dict__.get("forward"), "_anydecode_fast_linear", False):
                del m.__dict__["forward"]
