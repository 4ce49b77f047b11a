"""Which cores an engine computes on (`cpu_bind`), as vLLM's `VLLM_CPU_OMP_THREADS_BIND`.

torch's matmuls split each operation evenly over its threads and wait for the slowest: when
another busy process shares one of the cores, the thread on that core runs at half speed and
every operation waits for it, so the whole engine runs at about half speed too. Binding the
engine to the cores that are free avoids that:

- None (the default): no binding; torch's and numba's thread counts stay as they are.
- "auto": the cores of this process's affinity mask that were mostly idle over a short sample
  of /proc/stat (all of them when none is); decided once, when the engine is built.
- "0-1", "0,2": those cores.

Every thread of the process is bound (torch's and numba's pools may already exist) and both
pools are sized to the cores chosen.
"""

from __future__ import annotations

import logging
import os
import time

from tideflow.config import parse_cores

logger = logging.getLogger(__name__)

IDLE_SAMPLE_S = 0.25
BUSY_CORE = 0.5  # a core more than this busy during the sample is left to whoever uses it


def _busy_fractions(sample_s: float) -> dict[int, float]:
    """Per core, the fraction of `sample_s` it spent busy (Linux /proc/stat)."""

    def read() -> dict[int, tuple[int, int]]:
        out = {}
        with open("/proc/stat", encoding="ascii") as f:
            for line in f:
                if line.startswith("cpu") and line[3].isdigit():
                    name, *fields = line.split()
                    values = [int(x) for x in fields[:8]]
                    idle = values[3] + values[4]
                    out[int(name[3:])] = (sum(values) - idle, sum(values))
        return out

    before = read()
    time.sleep(sample_s)
    after = read()
    return {
        cpu: (after[cpu][0] - busy) / max(1, after[cpu][1] - total)
        for cpu, (busy, total) in before.items()
        if cpu in after
    }


def choose_cores(spec: str, allowed: list[int], busy: dict[int, float] | None = None) -> list[int]:
    """The cores `spec` names among `allowed` (auto: the idle ones, by `busy` fractions)."""
    if spec == "auto":
        busy = _busy_fractions(IDLE_SAMPLE_S) if busy is None else busy
        idle = [c for c in allowed if busy.get(c, 0.0) <= BUSY_CORE]
        return idle or list(allowed)
    cores = parse_cores(spec)
    outside = [c for c in cores if c not in allowed]
    if outside:
        raise ValueError(f"cpu_bind: cores {outside} are not available to this process (it may use {allowed})")
    return cores


def bind_compute_threads(spec: str | None) -> list[int] | None:
    """Apply `spec` to this process (see the module docstring); returns the cores, or None when
    nothing was bound."""
    if spec is None or not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    cores = choose_cores(spec, allowed)
    for tid in _threads():
        try:
            os.sched_setaffinity(tid, cores)
        except OSError:  # a thread that ended meanwhile
            pass
    import torch

    from tideflow.kernels.threads import set_kernel_threads

    set_kernel_threads(len(cores))  # first: starting numba's pool resets torch's thread count too
    torch.set_num_threads(len(cores))
    logger.info("engine threads bound to cores %s (cpu_bind=%r)", cores, spec)
    return cores


def binding_state() -> tuple[list[int], int, int]:
    """This process's cores and torch's and numba's thread counts, for `restore_binding`."""
    import torch

    from tideflow.kernels.threads import kernel_threads

    return sorted(os.sched_getaffinity(0)), torch.get_num_threads(), kernel_threads()


def restore_binding(state: tuple[list[int], int, int]) -> None:
    """Undo `bind_compute_threads` (an engine built in a process that goes on with other work:
    the benchmarks)."""
    import torch

    from tideflow.kernels.threads import set_kernel_threads

    cores, torch_threads, numba_threads = state
    for tid in _threads():
        try:
            os.sched_setaffinity(tid, cores)
        except OSError:
            pass
    set_kernel_threads(numba_threads)
    torch.set_num_threads(torch_threads)


def _threads() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return [0]
