"""The contention benchmark's competitor: one core kept busy for as long as the block runs."""

from __future__ import annotations

import os
import time

import pytest

from tideflow.bench.contention import busy_core, busy_core_choice


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        return f.read().rsplit(")", 1)[1].split()


def _cpu_s(pid: int) -> float:
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads /proc")
def test_the_competitor_spins_on_its_core_and_ends_with_the_block():
    with busy_core() as busy:
        assert busy.core == busy_core_choice()
        deadline = time.monotonic() + 10
        while os.sched_getaffinity(busy.pid) != {busy.core}:  # it pins itself once Python is up
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # spinning, not waiting: it keeps using CPU (a bound on the wait, not on its speed: on a
        # loaded machine it gets less than its core, but a blocked process gets none)
        start = _cpu_s(busy.pid)
        while _cpu_s(busy.pid) - start < 0.2:
            assert time.monotonic() < deadline + 20, "the competitor is not using its core"
            time.sleep(0.05)
    assert not os.path.exists(f"/proc/{busy.pid}")  # killed and reaped
