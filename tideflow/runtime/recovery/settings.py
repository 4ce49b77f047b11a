"""How a deployed graph survives faults: its recovery settings.

`RecoveryConfig` is what `graph.deploy(checkpoint_dir=..., checkpoint_interval=...,
checkpoint_batches=..., recovery=..., faults=...)` builds: where checkpoints and input logs go,
how often barriers are injected, how often a replica may be restarted, and the faults tests
inject (`tideflow.runtime.recovery.faults`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tideflow.runtime.recovery.faults import FaultSpec


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
