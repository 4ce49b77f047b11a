"""The size of the numba kernels' thread pool, for code outside `kernels/` (which never
imports numba itself)."""

from __future__ import annotations

import numba


def kernel_threads() -> int:
    return numba.get_num_threads()


def set_kernel_threads(count: int) -> None:
    """Start numba's pool if it is not running yet, then let kernels use `count` threads (at most
    the pool's size). Starting the pool sets OpenMP's thread count again, and torch's libgomp
    answers the same `omp_set_num_threads` symbol: callers size torch's pool after this."""
    from numba.np.ufunc.parallel import _launch_threads

    _launch_threads()
    numba.set_num_threads(max(1, min(count, numba.config.NUMBA_NUM_THREADS)))
