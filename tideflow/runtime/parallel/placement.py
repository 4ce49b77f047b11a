"""Where stage replicas and their shards run on a Ray cluster.

- A replica of a sharded stage (`shards=k`) gets a placement group of k bundles, one per
  shard, each holding the stage's per-shard resources: STRICT_PACK when the stage uses GPUs
  (the shards all-reduce every layer, so they share a node and its NVLink / PCIe), PACK
  otherwise. The replica's actor (rank 0) takes bundle 0; the rank actors it starts take
  bundles 1..k-1 (`shard_bundles`).
- The replicas of an unsharded stage are spread over the nodes that have the resources
  they ask for (Ray's SPREAD strategy), so one node's loss takes out one replica, not all.

Custom resources (`resources={"decode_node": 1}`) pin a stage to the nodes that offer them;
that is how a graph puts prefill and decode on different machines.

A deploy never hangs on resources (docs/reliability.md fault 11): `check_capacity` refuses a
graph whose stages ask, in all, for more than the cluster has (replicas, shards and the expert
actors each replica starts), naming every stage that asks; `wait_placed` waits for actors to
be constructed, but raises naming the ones that waited for resources longer than a timeout.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from tideflow.runtime.parallel import actor_state

_EPS = 1e-9  # slack when comparing fractional resource amounts


class PlacementError(ValueError):
    """The cluster cannot place what a deploy asks for; says what was asked and what it has."""


@dataclass(frozen=True)
class StageDemand:
    """What all replicas of one stage ask of the cluster together."""

    stage: str  # stage name
    total: dict  # resource -> amount over every replica, shard and expert actor
    how: str  # how the total is made, e.g. "2 replicas x CPU=1 + 3 expert actors x CPU=0.25 each"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _amounts(need: dict) -> str:
    return ", ".join(f"{k}={_num(v)}" for k, v in need.items() if v) or "nothing"


def stage_demand(spec, experts=None) -> StageDemand:
    """The demand of stage `spec` (a StageSpec): replicas x shards x its per-shard resources,
    plus, per replica, the expert actors its engine starts (`experts`: the stage's
    ExpertParallelConfig, or None)."""
    per_shard = {"CPU": spec.num_cpus, "GPU": spec.num_gpus, **spec.resources_dict}
    units = spec.replicas * spec.shards
    total = {k: units * v for k, v in per_shard.items() if v}
    unit = "replica" if spec.shards == 1 else "shard"
    how = f"{units} {unit}{'s' * (units != 1)} x {_amounts(per_shard)}"
    if experts is not None and experts.num_cpus:
        count = spec.replicas * experts.actors
        total["CPU"] = total.get("CPU", 0.0) + count * experts.num_cpus
        how += f" + {count} expert actor{'s' * (count != 1)} x CPU={_num(experts.num_cpus)}"
    return StageDemand(spec.name, total, how)


def check_capacity(graph: str, demands: list[StageDemand], cluster: dict) -> None:
    """Raise PlacementError when the stages of `graph` ask, in all, for more of a resource than
    `cluster` (resource -> total amount, `ray.cluster_resources()`) has; the message names each
    stage that asks for it and how its share is made."""
    total: dict[str, float] = {}
    for d in demands:
        for key, amount in d.total.items():
            total[key] = total.get(key, 0.0) + amount
    for key, amount in total.items():
        have = float(cluster.get(key, 0.0))
        if amount > have + _EPS:
            askers = "; ".join(f"stage {d.stage!r} asks {key}={_num(d.total[key])} ({d.how})"
                               for d in demands if d.total.get(key))
            raise PlacementError(
                f"graph {graph!r} cannot be placed: its stages ask for {key}={_num(amount)} in all, but the "
                f"cluster has {key}={_num(have)}. {askers}. Ask for less (num_cpus, replicas, expert_cpus) or add nodes."
            )


def wait_placed(refs: list, handles: list, names: list[str], asks: list[dict], timeout: float) -> list:
    """`ray.get(refs)`, where `refs[i]` is a call on actor `handles[i]` (named `names[i]`, asking
    for `asks[i]`) that returns once the actor is constructed; a constructor's failure raises as
    from `ray.get`. Raises PlacementError naming the actors that waited for resources (no
    node took them) for `timeout` seconds, with what they ask and what the cluster has free.
    Construction itself (a model loading) is not timed, nor is an actor that asks for nothing. Where Ray cannot tell a waiting actor
    from one being constructed, this waits as `ray.get` does."""
    import ray

    pending = list(range(len(refs)))
    waiting_since: dict[int, float] = {}
    while pending:
        done, _ = ray.wait([refs[i] for i in pending], num_returns=len(pending), timeout=0.5)
        if done:
            ray.get(done)  # a failed constructor raises here
            finished = set(done)
            pending = [i for i in pending if refs[i] not in finished]
        if not pending:
            break
        waiting = actor_state.unplaced([handles[i] for i in pending])
        now = time.monotonic()
        # an actor that asks for nothing waits for its worker process, never for resources
        stuck = set() if waiting is None else {pending[j] for j in waiting if any(asks[pending[j]].values())}
        waiting_since = {i: waiting_since.get(i, now) for i in stuck}
        late = sorted(i for i, since in waiting_since.items() if now - since >= timeout)
        if late:
            free = {k: v for k, v in ray.available_resources().items() if k in ("CPU", "GPU") or k in asks[late[0]]}
            listed = ", ".join(f"{names[i]} (asks {_amounts(asks[i])})" for i in late)
            raise PlacementError(
                f"{listed}: not placed after {_num(timeout)} s; the cluster has {_amounts(free)} free now "
                f"(other actors hold the rest). Free resources, ask for less, or add nodes."
            )
    return ray.get(refs)


def shard_bundle(spec) -> dict[str, float]:
    """The resources one shard of `spec` holds in its placement group bundle."""
    bundle = {"CPU": spec.num_cpus, "GPU": spec.num_gpus, **spec.resources_dict}
    bundle = {k: float(v) for k, v in bundle.items() if v}
    return bundle or {"CPU": 0.001}  # Ray refuses an all-zero bundle


def replica_placement(spec, name: str) -> tuple[dict, object | None]:
    """Ray actor options that place one replica of `spec` (named `name`), and the placement
    group created for it (None when the stage is not sharded). The caller removes the group
    with `release` when the replica goes away."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    if spec.shards > 1:
        strategy = "STRICT_PACK" if spec.num_gpus > 0 else "PACK"
        group = ray.util.placement_group([shard_bundle(spec)] * spec.shards, strategy=strategy, name=name)
        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=0)}, group
    if spec.replicas > 1:
        return {"scheduling_strategy": "SPREAD"}, None
    return {}, None


def shard_bundles(world: int, gpu: bool) -> tuple[object, list[int], dict, bool]:
    """Where the rank actors 1..world-1 of a sharded engine go: (placement group, bundle
    index per rank, the actor options one rank asks for, whether the caller owns the group).

    Inside a replica the executor placed (`replica_placement`) they take the replica's own
    group, bundles 1..world-1, with the same per-shard resources as rank 0. Elsewhere (an
    in-process `LLM(tensor_parallel_size=k)`) a group of world-1 bundles is created here and
    owned by the caller, who removes it when the engine stops."""
    import ray

    current = ray.util.get_current_placement_group()
    if current is not None and len(current.bundle_specs) == world:
        bundle = dict(current.bundle_specs[1])
        options = {"num_cpus": bundle.pop("CPU", 0), "num_gpus": bundle.pop("GPU", 0), "resources": bundle}
        return current, list(range(1, world)), options, False
    bundle = {"CPU": 1.0, "GPU": 1.0} if gpu else {"CPU": 1.0}
    group = ray.util.placement_group([bundle] * (world - 1), strategy="STRICT_PACK" if gpu else "PACK")
    return group, list(range(world - 1)), {"num_cpus": 1, "num_gpus": 1 if gpu else 0}, True


def release(group) -> None:
    """Remove a placement group (None: nothing to do)."""
    if group is not None:
        import ray

        ray.util.remove_placement_group(group)
