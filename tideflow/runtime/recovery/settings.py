"""How a deployed graph survives faults: its recovery settings, and a seeded fault injector.

`RecoveryConfig` is what `graph.deploy(checkpoint_dir=..., checkpoint_interval=...,
checkpoint_batches=..., recovery=...)` builds: where checkpoints and input logs go, how often
barriers are injected, and how often a replica may be restarted. `FaultSpec` / `FaultInjector`
let tests crash a chosen replica at a chosen point (after K input batches, inside a snapshot,
inside a restore, while closing), once across its restarts.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

PHASES = ("process", "snapshot", "restore", "close")


@dataclass(frozen=True)
class FaultSpec:
    """Crash replica `replica` of `stage` (the process exits at once, like a SIGKILL) when it
    reaches `phase` for the `after`-th time: its `after`-th input batch ("process"), its
    `after`-th snapshot (after writing it, before acknowledging: a checkpoint cut short),
    its `after`-th restore, or while closing. Fires once across restarts."""

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


@dataclass(frozen=True)
class RecoveryConfig:
    """Checkpointing and restart settings of a deployed graph."""

    checkpoint_dir: str  # local directory or pyarrow.fs URI (s3://bucket/prefix ...)
    interval_s: float = 10.0  # a checkpoint at least this often (seconds) while the graph runs
    interval_batches: int = 256  # ... and whenever a replica logged this many input batches since the last
    max_restarts: int = 8  # per replica; then its requests fail explicitly
    timeout_s: float = 60.0  # a checkpoint not complete by then is aborted (the next one will do)
    faults: tuple[FaultSpec, ...] = field(default_factory=tuple)  # crashes to inject (tests)
    owns_dir: bool = False  # the directory was made for this deployment: removed at shutdown

    def __post_init__(self) -> None:
        if not isinstance(self.checkpoint_dir, str) or not self.checkpoint_dir:
            raise ValueError(f"checkpoint_dir must be a non-empty path or URI, got {self.checkpoint_dir!r}")
        if not (isinstance(self.interval_s, (int, float)) and self.interval_s > 0):
            raise ValueError(f"checkpoint_interval must be a number of seconds > 0, got {self.interval_s!r}")
        if not (isinstance(self.interval_batches, int) and self.interval_batches >= 1):
            raise ValueError(f"checkpoint_batches must be an integer >= 1, got {self.interval_batches!r}")
        if not (isinstance(self.max_restarts, int) and self.max_restarts >= 0):
            raise ValueError(f"max_restarts must be an integer >= 0, got {self.max_restarts!r}")


def recovery_config(
    graph_name: str,
    recovery: bool,
    checkpoint_dir: str | None,
    checkpoint_interval: float | None,
    checkpoint_batches: int | None,
    max_restarts: int | None,
    faults=(),
) -> RecoveryConfig | None:
    """The deploy arguments as a config; None when recovery is off. `checkpoint_dir=None` with
    recovery on makes a fresh temporary directory, removed at shutdown."""
    if not isinstance(recovery, bool):
        raise ValueError(f"recovery must be True or False, got {recovery!r}")
    if not recovery:
        if checkpoint_dir is not None:
            raise ValueError("checkpoint_dir: given with recovery=False; leave it None to turn checkpoints off")
        return None
    owns = checkpoint_dir is None
    if owns:
        import tempfile

        checkpoint_dir = tempfile.mkdtemp(prefix=f"tideflow-{graph_name}-")
    kwargs = {"checkpoint_dir": checkpoint_dir, "faults": tuple(faults), "owns_dir": owns}
    if checkpoint_interval is not None:
        kwargs["interval_s"] = checkpoint_interval
    if checkpoint_batches is not None:
        kwargs["interval_batches"] = checkpoint_batches
    if max_restarts is not None:
        kwargs["max_restarts"] = max_restarts
    return RecoveryConfig(**kwargs)


class FaultInjector:
    """The faults aimed at one replica; `check` ends the process when one is due."""

    def __init__(self, faults: tuple[FaultSpec, ...], stage: str, replica: int, store):
        self.faults = [f for f in faults if f.stage == stage and f.replica == replica]
        self.store = store
        self.counts = dict.fromkeys(PHASES, 0)

    def check(self, phase: str) -> None:
        """Count one more `phase` event; crash here if a fault is due (once across restarts)."""
        if not self.faults:
            return
        self.counts[phase] += 1
        for f in self.faults:
            if f.phase == phase and self.counts[phase] >= f.after and self.store.fire_once(f.key):
                os._exit(1)
