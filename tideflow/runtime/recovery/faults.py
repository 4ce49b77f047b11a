"""Fault injection for tests: crash a chosen replica at a chosen point, once across its restarts.

A `FaultSpec` names the replica, the point (after K input batches, inside a snapshot, inside a
restore, while closing) and K; `seeded_faults` draws some with a seed; a replica's
`FaultInjector` ends its process when one is due. The recovery hooks of a replica hold its
injector (`tideflow.runtime.recovery.replica_hooks`); with recovery off there is none.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

PHASES = ("process", "snapshot", "restore", "close")


@dataclass(frozen=True)
class FaultSpec:
    """Crash replica `replica` of `stage` (the process exits at once, like a SIGKILL) when it
    reaches `phase` for the `after`-th time: its `after`-th input batch ("process": in the loop
    step that hands the role that batch, before anything the step produces is sent), its
    `after`-th snapshot (after writing it, before acknowledging: a checkpoint cut short), its
    `after`-th restore, or while closing. Fires once across restarts."""

    stage: str
    replica: int = 0
    phase: str = "process"  # one of PHASES
    after: int = 1  # >= 1

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {self.phase!r}")
        if not isinstance(self.after, int) or self.after < 1:
            raise ValueError(f"after must be an integer >= 1, got {self.after!r}")

    @property
    def key(self) -> str:
        return f"{self.stage}-{self.replica}-{self.phase}-{self.after}"


def seeded_faults(seed: int, stages: dict[str, int], phases=("process",), count: int = 1, max_after: int = 20) -> tuple[FaultSpec, ...]:
    """`count` faults drawn with `seed`: a stage (weighted by its replicas), a replica, a phase
    and a K in 1..max_after. `stages`: stage name -> replicas."""
    rng = random.Random(seed)
    names = sorted(stages)
    out = []
    for _ in range(count):
        stage = rng.choice(names)
        out.append(FaultSpec(stage, rng.randrange(stages[stage]), rng.choice(list(phases)), rng.randrange(1, max_after + 1)))
    return tuple(out)


class FaultInjector:
    """The faults aimed at one replica; `check` ends the process when one is due."""

    def __init__(self, faults: tuple[FaultSpec, ...], stage: str, replica: int, store):
        self.faults = [f for f in faults if f.stage == stage and f.replica == replica]
        self.store = store  # CheckpointStore: remembers which faults fired (`fire_once`)
        self.counts = dict.fromkeys(PHASES, 0)  # phase -> events counted in this incarnation

    def check(self, phase: str, count: int = 1) -> None:
        """Count `count` more `phase` events; crash here if a fault is due (once across restarts)."""
        if not self.faults or not count:
            return
        self.counts[phase] += count
        for f in self.faults:
            if f.phase == phase and self.counts[phase] >= f.after and self.store.fire_once(f.key):
                os._exit(1)
