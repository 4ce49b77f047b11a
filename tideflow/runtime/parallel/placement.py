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
"""

from __future__ import annotations


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
