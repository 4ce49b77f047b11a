"""One rank of a tensor-parallel engine, and the collectives that tie the ranks together.

Rank 0 is the engine's own process (scheduler, sampler, its shard of the model); ranks
1..world-1 are `ShardWorker`s (Ray actors, see `sharded_runner`). Each step rank 0 sends
every worker the step's packed inputs (`ShardStep`); all ranks run the same sharded forward,
whose all-reduces keep them in lockstep, and only rank 0 computes logits.

The ranks meet through a `torch.distributed` TCP store that rank 0 hosts; the process group
(gloo on CPU, nccl on CUDA) is built directly rather than as torch's global default group,
so several engines (and tests) can live in one process.
"""

from __future__ import annotations

import dataclasses
import datetime
from dataclasses import dataclass

import torch

from tideflow.runtime.engine.attention import AttentionMetadata

COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=300)  # a rank that never answers fails the step after this
_STORE_PREFIX = "tideflow-tp/"


def host_store(host: str):
    """Rank 0's TCP store on a free port of `host` (read it back as `store.port`)."""
    import torch.distributed as dist

    return dist.TCPStore(host, 0, None, is_master=True, wait_for_workers=False, timeout=COLLECTIVE_TIMEOUT)


def join_group(host: str, port: int, rank: int, world: int, device: torch.device, own_host: str, store=None):
    """This rank's process group over the store at `host:port` (rank 0 passes the `store` it
    hosts). Blocks until all `world` ranks have joined. gloo binds to `own_host`, the address
    the other ranks reach this one at."""
    import torch.distributed as dist

    if store is None:
        store = dist.TCPStore(host, port, None, is_master=False, timeout=COLLECTIVE_TIMEOUT)
    prefixed = dist.PrefixStore(_STORE_PREFIX, store)
    if device.type == "cuda":
        return dist.ProcessGroupNCCL(prefixed, rank, world)
    options = dist.ProcessGroupGloo._Options()
    options._timeout = COLLECTIVE_TIMEOUT
    options._devices = [dist.ProcessGroupGloo.create_device(hostname=own_host)]
    return dist.ProcessGroupGloo(prefixed, rank, world, options)


def all_reduce_over(group):
    """`all_reduce(t)`: sums `t` over the ranks of `group`, in place."""

    def all_reduce(t: torch.Tensor) -> None:
        group.allreduce([t]).wait()

    return all_reduce


@dataclass(slots=True)
class ShardStep:
    """What rank 0 sends the other ranks each step: the packed inputs of `PackedDecoder`."""

    input_ids: torch.Tensor  # [T] int64: token ids of the packed batch
    positions: torch.Tensor  # [T] int64: position of each token in its sequence
    meta: AttentionMetadata  # slots, block tables, row kinds; kv_cache None: each rank sets its own
    logits_rows: torch.Tensor  # [n] int64: rows to compute logits at (empty: only rank 0 samples)

    def to(self, device: torch.device) -> "ShardStep":
        """The step with every tensor on `device` (a no-op for tensors already there)."""
        return ShardStep(
            self.input_ids.to(device), self.positions.to(device), _meta_to(self.meta, device), self.logits_rows.to(device)
        )


def _meta_to(meta: AttentionMetadata, device: torch.device) -> AttentionMetadata:
    def move(record):
        if record is None:
            return None
        return dataclasses.replace(
            record, **{f.name: getattr(record, f.name).to(device) for f in dataclasses.fields(record)}
        )

    return dataclasses.replace(
        meta,
        slot_mapping=meta.slot_mapping.to(device),
        decode_groups=[move(g) for g in meta.decode_groups],
        paged_prefill=move(meta.paged_prefill),
    )


class ShardWorker:
    """Ranks 1..world-1 of a tensor-parallel engine (the body of a Ray actor).

    The constructor loads the model and narrows it to this rank's shard; `connect` joins the
    process group (blocking until every rank joins); `forward` runs one step."""

    def __init__(self, config, rank: int, world: int, num_blocks: int):
        """`config`: the engine's `EngineConfig`; `num_blocks`: the KV pool size rank 0 chose."""
        from tideflow.models.loader import load_model
        from tideflow.runtime.parallel.tensor_parallel import shard_model
        from tideflow.runtime.engine.attention import PagedKVCache, register_attention

        mc = config.model
        self.config, self.rank, self.world = config, rank, world
        self.device = torch.device(config.parallel.device)
        self.model, hf_config = load_model(
            mc.model, dtype=mc.dtype, device=config.parallel.device, attn_implementation=register_attention(config.kernel_backend),
            kernel_backend=config.kernel_backend, trust_remote_code=mc.trust_remote_code,
        )
        shard_model(self.model, rank, world)
        text = hf_config.get_text_config()
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        kv_heads = (getattr(text, "num_key_value_heads", None) or text.num_attention_heads) // world
        dtype = next(self.model.parameters()).dtype
        self.kv_cache = PagedKVCache.allocate(
            text.num_hidden_layers, num_blocks, config.cache.block_size, kv_heads, head_dim, dtype, self.device
        )
        self.decoder = None

    def ready(self) -> int:
        """This rank, once the constructor has finished."""
        return self.rank

    def connect(self, host: str, port: int) -> None:
        """Join the process group at rank 0's store `host:port` and build this rank's sharded forward."""
        import ray

        from tideflow.runtime.parallel.tensor_parallel import shard_decoder
        from tideflow.runtime.engine.attention import attend_function

        own_host = ray.util.get_node_ip_address()
        self.group = join_group(host, port, self.rank, self.world, self.device, own_host)
        self.decoder = shard_decoder(
            self.model, attend_function(self.config.kernel_backend), self.rank, self.world, all_reduce_over(self.group),
            narrowed=True,
        )

    def read_kv(self, block_table: list[int], num_tokens: int):
        """This rank's kv heads of a sequence's K/V (see `PagedKVCache.read`)."""
        return self.kv_cache.read(block_table, num_tokens)

    def write_kv(self, block_table: list[int], k, v) -> None:
        """Write this rank's kv heads of a sequence's K/V into its blocks."""
        self.kv_cache.write(block_table, k, v)

    def forward(self, step: ShardStep) -> None:
        """Run one step's sharded forward (its all-reduces pair with the other ranks')."""
        step = step.to(self.device)
        step.meta.kv_cache = self.kv_cache
        self.decoder(step.input_ids, step.positions, step.meta, step.logits_rows)
