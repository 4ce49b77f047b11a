"""Probes of the machine a benchmark runs on: CPU time used by others, versions, load."""

from __future__ import annotations

import os
import platform


def cpu_busy_s() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (Linux), or None."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU seconds this process has used (user + system)."""
    t = os.times()
    return t.user + t.system


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used by process `pid` and its descendants, live or reaped
    (Linux /proc; 0 for a process gone). A benchmark's subprocess, e.g. a peer engine, is its own work, not noise."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # after "pid (comm)": state is fields[0]
            total += sum(map(int, fields[11:15])) / os.sysconf("SC_CLK_TCK")  # utime, stime, and reaped children's
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children", encoding="ascii") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError, IndexError):
            continue
    return total


def other_cpu_frac(busy0: float | None, own0: float, wall: float, own1: float | None = None) -> float | None:
    """Share of the machine's CPUs that other processes used since (busy0, own0), over `wall` s.
    `own0`/`own1`: this benchmark's CPU seconds at the start and end (default: `own_cpu_s()`)."""
    busy1 = cpu_busy_s()
    if busy0 is None or busy1 is None or wall <= 0:
        return None
    own1 = own_cpu_s() if own1 is None else own1
    return max(0.0, (busy1 - busy0) - (own1 - own0)) / (wall * (os.cpu_count() or 1))


def environment() -> dict:
    """Versions, threads and load of the machine a benchmark runs on."""
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "load_avg_1m": os.getloadavg()[0],  # > torch_threads means other work shared the CPU
    }
