"""Device functions shared by the CUDA kernels.

The builtin `min` / `max` do not compile on numba 0.68's built-in CUDA target (its star-args
implementation), though they run in the simulator; kernels use these instead.
"""

from __future__ import annotations

from numba import cuda


@cuda.jit(device=True)
def dmin(a, b):  # pragma: no cover (device code)
    return a if a < b else b


@cuda.jit(device=True)
def dmax(a, b):  # pragma: no cover (device code)
    return a if a > b else b
