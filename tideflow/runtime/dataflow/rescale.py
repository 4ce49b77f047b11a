"""Changing a stage's replica count while traffic flows, and a per-stage autoscaling policy.

Scaling up starts the new replicas, wires them, then tells the stages around them: the
replicas downstream expect their barriers, the replicas upstream route to them. Scaling down
first stops routing to the replicas that go (each upstream replica lands its pushes in
flight before switching), waits until they have finished what they hold (drain), then
stops them and tells the replicas downstream to stop expecting them. Checkpointing pauses
while the graph is rewired and resumes with the new replicas.

A stage routed by request (`sticky`, the detokenizer) keeps per-request state on the replica
a request hashes to; changing its count would move requests mid-flight, so it is refused.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


def rescale(handle, stage: str, replicas: int, timeout: float = 120.0) -> None:
    """Give `stage` of the deployed graph behind `handle` exactly `replicas` replicas."""
    import ray

    compiled = handle.graph
    try:
        compiled.stage(stage)
    except KeyError:
        raise ValueError(f"stage: graph {compiled.name!r} has no stage {stage!r}") from None
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise ValueError(f"replicas must be an integer >= 1, got {replicas!r}")
    if compiled.roles[stage].routing == "sticky":
        raise ValueError(f"stage {stage!r} routes by request (sticky); its replica count cannot change while it runs")
    launcher, actors, coordinator = handle._launcher, handle._replicas, handle.coordinator
    current = actors[stage]
    if replicas == len(current):
        return
    if coordinator is not None:
        ray.get(coordinator.pause.remote())
    if replicas > len(current):
        _grow(handle, stage, replicas - len(current), launcher, actors)
    else:
        _shrink(handle, stage, len(current) - replicas, launcher, actors, timeout)
    if coordinator is not None:
        wirings = {f"{s}/{i}": launcher.wiring(s, actors, handle.collector) for s, hs in actors.items() for i in hs}
        replicas_now = {f"{s}/{i}": a for s, hs in actors.items() for i, a in hs.items()}
        sources = [f"{compiled.source}/{i}" for i in actors[compiled.source]]
        plan = launcher.migration_plan(actors, handle.collector)
        ray.get(coordinator.set_topology.remote(replicas_now, sources, wirings, plan))
    if stage == compiled.source:
        from tideflow.runtime.dataflow.router import Router

        handle._router = Router(len(actors[stage]), compiled.roles[stage].routing)


def _neighbours(compiled, stage: str) -> list[str]:
    return compiled.upstream(stage) + compiled.downstream(stage)


def _rewire_neighbours(handle, stage: str, launcher, actors) -> None:
    import ray

    compiled = handle.graph
    calls = [
        a.rewire.remote(launcher.wiring(s, actors, handle.collector))
        for s in _neighbours(compiled, stage) for a in actors[s].values()
    ]
    if not all(ray.get(calls)):
        raise TimeoutError(f"rescaling {stage!r}: a neighbouring replica did not take its new wiring")


def _grow(handle, stage: str, count: int, launcher, actors) -> None:
    import ray

    first = max(handle._next_index.get(stage, 0), max(actors[stage], default=-1) + 1)
    new = {i: launcher.start(stage, i) for i in range(first, first + count)}
    handle._next_index[stage] = first + count
    actors[stage].update(new)
    ray.get([a.connect.remote(launcher.wiring(stage, actors, handle.collector)) for a in new.values()])
    runs = {f"{handle.graph.name}/{stage}/{i}": [a.run.remote()] for i, a in new.items()}
    handle._runs.update(runs)
    handle.collector.watch.remote(runs)
    _rewire_neighbours(handle, stage, launcher, actors)


def _shrink(handle, stage: str, count: int, launcher, actors, timeout: float) -> None:
    import ray

    victims = {i: actors[stage].pop(i) for i in sorted(actors[stage])[-count:]}
    upstream = handle.graph.upstream(stage)
    calls = [a.rewire.remote(launcher.wiring(s, actors, handle.collector)) for s in upstream for a in actors[s].values()]
    if not all(ray.get(calls)):
        raise TimeoutError(f"rescaling {stage!r}: an upstream replica did not stop routing to the removed ones")
    deadline = time.monotonic() + timeout
    pending = dict(victims)
    while pending:  # drain: they finish what they hold; nothing new reaches them
        done = ray.get([a.drained.remote() for a in pending.values()])
        pending = {i: a for (i, a), d in zip(list(pending.items()), done) if not d}
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"rescaling {stage!r}: replicas {sorted(pending)} did not drain in {timeout}s")
        if pending:
            time.sleep(0.05)
    stops = [a.stop.remote() for a in victims.values()]
    runs = [handle._runs.pop(f"{handle.graph.name}/{stage}/{i}")[0] for i in victims]
    ray.wait(stops + runs, num_returns=len(stops) + len(runs), timeout=30)  # no call left in flight at the kill
    for i, a in victims.items():
        ray.kill(a)
        launcher.release(stage, i)
    downstream = handle.graph.downstream(stage)
    calls = [a.rewire.remote(launcher.wiring(s, actors, handle.collector)) for s in downstream for a in actors[s].values()]
    ray.get(calls)


@dataclass(frozen=True)
class AutoscalePolicy:
    """When to add or remove replicas of one stage, from what its replicas report.

    Up by one when the mean queue per replica (requests held plus inbox) exceeds
    `target_queue` or the mean KV usage exceeds `max_kv_usage`; down by one when both are
    well below (a quarter of the queue target, half the KV bound); always within
    [min_replicas, max_replicas]."""

    min_replicas: int = 1
    max_replicas: int = 4
    target_queue: float = 8.0  # requests per replica
    max_kv_usage: float = 0.8  # fraction of KV blocks in use

    def __post_init__(self) -> None:
        if not (isinstance(self.min_replicas, int) and self.min_replicas >= 1):
            raise ValueError(f"min_replicas must be an integer >= 1, got {self.min_replicas!r}")
        if not (isinstance(self.max_replicas, int) and self.max_replicas >= self.min_replicas):
            raise ValueError(f"max_replicas must be an integer >= min_replicas, got {self.max_replicas!r}")
        if not self.target_queue > 0:
            raise ValueError(f"target_queue must be > 0, got {self.target_queue!r}")
        if not 0 < self.max_kv_usage <= 1:
            raise ValueError(f"max_kv_usage must be in (0, 1], got {self.max_kv_usage!r}")

    def decide(self, replica_stats: list[dict]) -> int:
        """The replica count to move to, given each replica's `stats()`."""
        n = len(replica_stats)
        queue = sum(r.get("load", 0) + r.get("inbox", 0) for r in replica_stats) / max(n, 1)
        kv = sum(r.get("kv_cache_usage_perc", 0.0) for r in replica_stats) / max(n, 1)
        want = n
        if queue > self.target_queue or kv > self.max_kv_usage:
            want = n + 1
        elif queue < self.target_queue / 4 and kv < self.max_kv_usage / 2:
            want = n - 1
        return min(max(want, self.min_replicas), self.max_replicas)


class Autoscaler:
    """Applies a policy to one stage of a deployed graph every `period_s` seconds, on a
    background thread, until `stop()`."""

    def __init__(self, handle, stage: str, policy: AutoscalePolicy, period_s: float = 2.0):
        self.handle, self.stage, self.policy, self.period_s = handle, stage, policy, period_s
        self.decisions: list[int] = []  # replica counts moved to
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"autoscale-{stage}")
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.period_s):
            stats = self.handle.stats()[self.stage]
            want = self.policy.decide(stats)
            if want != len(stats):
                self.handle.rescale(self.stage, want)
                self.decisions.append(want)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
