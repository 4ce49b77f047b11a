"""A model runner whose model is split over `tensor_parallel_size` ranks.

Rank 0 is the engine's own process: it keeps the scheduler and the sampler, prepares each
step as `ModelRunner` does and runs its shard of the forward. Ranks 1..k-1 are `ShardWorker`
Ray actors (inside a graph replica they take bundles 1..k-1 of the replica's own placement
group; in-process they get a group of their own, PACK on CPU, STRICT_PACK on GPUs: see
`tideflow.runtime.parallel.placement`), tied to
rank 0 by a torch.distributed process group (gloo on CPU, nccl on CUDA) that meets at a TCP
store rank 0 hosts. Each step rank 0 puts the step's packed inputs in the object store once,
asks every worker to run it, runs its own shard (the all-reduces keep the ranks in lockstep)
and then waits for the workers, so a failed worker fails the step. Only rank 0 computes logits
and samples. The rest of the engine sees an ordinary `ModelRunner`.
"""

from __future__ import annotations

import dataclasses
import weakref

import numpy as np
import torch

from tideflow.runtime.engine.core.scheduled_batch import ScheduledBatch
from tideflow.runtime.engine.model_runner import ModelRunner
from tideflow.runtime.parallel.placement import release, shard_bundles
from tideflow.runtime.parallel.shard_worker import ShardStep, all_reduce_over, host_store, join_group

RAY_NAMESPACE = "tideflow"


class ShardedModelRunner(ModelRunner):
    """`ModelRunner` over rank 0's shard, driving the other ranks each step. Build it with
    `start_sharded_runner`."""

    def __init__(self, model, kv_cache, sampler, *, device: str, decode_group_rows, packed, workers, group, placement):
        super().__init__(model, kv_cache, sampler, device=device, decode_group_rows=decode_group_rows, packed=packed)
        self.workers = workers  # Ray handles of ranks 1..k-1
        self.group = group  # rank 0's process group (kept alive with the runner)
        self._send_device = torch.device("cpu")  # steps cross Ray as CPU tensors
        self._release = weakref.finalize(self, _release, list(workers), placement)

    def forward_only(self, batch: ScheduledBatch) -> torch.Tensor:
        import ray

        input_ids, positions, meta, sample_idx = self.prepare(batch)
        step = ShardStep(input_ids, positions, dataclasses.replace(meta, kv_cache=None), sample_idx[:0])
        ref = ray.put(step.to(self._send_device))
        pending = [w.forward.remote(ref) for w in self.workers]
        logits = self.packed(input_ids, positions, meta, sample_idx)
        ray.get(pending)
        return logits

    def read_kv(self, block_table, num_tokens):
        """The whole K/V of a sequence, every rank's kv heads side by side in rank order (rank r
        holds heads r*h..(r+1)*h-1): the layout an unsharded cache holds, so a sharded prefill
        can hand over to a decode replica of any shard count."""
        import ray

        parts = [w.read_kv.remote(block_table, num_tokens) for w in self.workers]
        k, v = self.kv_cache.read(block_table, num_tokens)
        rest = ray.get(parts)
        return np.concatenate([k, *(p[0] for p in rest)], axis=2), np.concatenate([v, *(p[1] for p in rest)], axis=2)

    def write_kv(self, block_table, k, v):
        """Write a whole K/V (as `read_kv` returns it) into the sequence's blocks: each rank
        takes its slice of the kv heads."""
        import ray

        heads = self.kv_cache.k.shape[2]
        pending = [
            w.write_kv.remote(block_table, k[:, :, r * heads : (r + 1) * heads], v[:, :, r * heads : (r + 1) * heads])
            for r, w in enumerate(self.workers, start=1)
        ]
        self.kv_cache.write(block_table, k[:, :, :heads], v[:, :, :heads])
        ray.get(pending)

    def close(self) -> None:
        """Stop the other ranks and give back their placement group (also done when the runner
        is garbage collected)."""
        self._release()


def _release(workers, placement) -> None:
    """Kill the rank actors; remove their placement group when the runner created it (None:
    the group is the replica's, removed by the executor)."""
    import ray

    if not ray.is_initialized():
        return
    for w in workers:
        ray.kill(w)
    release(placement)


def start_sharded_runner(config, model, kv_cache, sampler, num_blocks: int, decode_group_rows) -> ShardedModelRunner:
    """Start ranks 1..k-1 of `config.parallel.tensor_parallel_size` (starting a local Ray
    instance when none runs), shard `model` in place as rank 0, and return the runner.
    `kv_cache` holds rank 0's kv heads; every worker allocates `num_blocks` blocks of its own."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from tideflow.models.packed_decoder import unsupported_reason
    from tideflow.runtime.parallel.tensor_parallel import shard_decoder
    from tideflow.runtime.engine.attention import attend_function
    from tideflow.runtime.parallel.shard_worker import ShardWorker

    world = config.parallel.tensor_parallel_size
    if config.model.model_impl == "transformers":
        raise ValueError("tensor_parallel_size > 1 runs tideflow's packed decoder; model_impl='transformers' cannot be sharded")
    reason = unsupported_reason(model)
    if reason is not None:
        raise ValueError(f"tensor_parallel_size > 1 needs a model the packed decoder runs: {reason}")
    if not ray.is_initialized():
        ray.init(namespace=RAY_NAMESPACE)
    device = torch.device(config.parallel.device)
    gpu = device.type == "cuda"
    group, bundles, options, owned = shard_bundles(world, gpu)
    placement = group if owned else None  # what this runner removes when it stops
    ray.get(group.ready())
    actor = ray.remote(ShardWorker)
    workers = [
        actor.options(
            **options, scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=index),
        ).remote(config, rank, world, num_blocks)
        for rank, index in zip(range(1, world), bundles)
    ]
    try:
        ray.get([w.ready.remote() for w in workers])  # loaded and sharded (surfaces a failed load)
        host = ray.util.get_node_ip_address()
        store = host_store(host)
        joined = [w.connect.remote(host, store.port) for w in workers]
        group = join_group(host, store.port, 0, world, device, host, store=store)
        ray.get(joined)
    except BaseException:
        _release(workers, placement)
        raise
    packed = shard_decoder(model, attend_function(config.kernel_backend), 0, world, all_reduce_over(group))
    return ShardedModelRunner(
        model, kv_cache, sampler, device=config.parallel.device, decode_group_rows=decode_group_rows, packed=packed,
        workers=workers, group=group, placement=placement,
    )
