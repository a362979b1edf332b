"""Triton code of the kernels (``@triton.jit`` functions); importing a module here imports triton.

Only :mod:`anydecode.kernels.dispatch` imports these modules, and only when a kernel is about to run: as the
compiled flavour (``anydecode.kernels.jit.<name>``) for CUDA tensors, or as the interpreted flavour
(``anydecode.kernels.jit_interpreted.<name>``, the same files decorated while Triton's interpreter is switched on)
for CPU tensors in tests. This file itself imports nothing.
"""
