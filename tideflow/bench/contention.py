"""A competing busy process for the contention benchmark: one core kept 100% busy by someone
else, as on a shared machine. Each system then runs beside it on the same trace."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass

_SPIN = "import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True:\n    pass\n"


def busy_core_choice() -> int:
    """The core the competitor takes: the last one this process may use."""
    return max(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1) - 1


@dataclass(frozen=True, slots=True)
class BusyCore:
    core: int  # the core kept busy
    pid: int  # the spinning process


@contextlib.contextmanager
def busy_core(core: int | None = None):
    """Keep `core` (default `busy_core_choice()`) busy with a spinning process while the block
    runs; yields a `BusyCore`."""
    core = busy_core_choice() if core is None else core
    proc = subprocess.Popen([sys.executable, "-c", _SPIN, str(core)], stdin=subprocess.DEVNULL)
    try:
        yield BusyCore(core, proc.pid)
    finally:
        proc.kill()
        proc.wait()
