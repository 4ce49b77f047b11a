"""One engine step run by hand, its parts timed: what `tideflow bench offline` reports as the
engine's overhead over the model forward. A profiling aid, not a step loop: it advances the
engine exactly as `Engine.step` does (the extra forward writes the same K/V again)."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(slots=True)
class StepParts:
    """Seconds each part of one step took, and the step's shape."""

    schedule_s: float  # the scheduler picking the batch
    forward_s: float  # the model forward alone (input preparation included), run once extra
    prepare_s: float  # input preparation alone
    execute_s: float  # the runner's execute: forward and sampling
    update_s: float  # the scheduler appending tokens and applying stop conditions
    num_seqs: int  # sequences scheduled
    num_tokens: int  # tokens computed


def profile_step(engine) -> StepParts:
    """Step `engine` (an `Engine`) once, part by part, timing each part."""
    scheduler, runner = engine.scheduler, engine.runner
    t0 = time.perf_counter()
    batch = scheduler.schedule()
    t1 = time.perf_counter()
    runner.forward_only(batch)
    t2 = time.perf_counter()
    runner.prepare(batch)
    t3 = time.perf_counter()
    out = runner.execute(batch)
    t4 = time.perf_counter()
    scheduler.update(batch, out)
    t5 = time.perf_counter()
    return StepParts(t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, len(batch), batch.num_tokens)
