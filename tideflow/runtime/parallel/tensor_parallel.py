"""Tensor parallelism for Llama-pattern models: one rank's 1/world of the weights.

`shard_model(model, rank, world)` narrows a transformers causal LM in place to what rank
`rank` of `world` holds (Megatron's split):

- attention: q heads [rank*H/w, (rank+1)*H/w) and the kv heads they read (kv heads
  [rank*KV/w, (rank+1)*KV/w); the grouping of q heads onto kv heads is preserved because
  both ranges are contiguous), and the matching input columns of `o_proj`;
- dense MLP: rows [rank*I/w, (rank+1)*I/w) of gate and of up, the same columns of down;
- MoE: every expert split the same way along its intermediate dimension (gate and up rows
  of the fused `gate_up_proj`, `down_proj` columns), a shared expert (qwen2_moe) like a dense
  MLP; the router (and a shared-expert gate) is replicated;
- embeddings, norms and lm_head are replicated.

Each rank's `o_proj`, MLP and MoE block then yield a partial sum of the full output.
`shard_decoder(...)` builds a `PackedDecoder` over the narrowed model and wraps those three
in modules that all-reduce their output (`RowParallel`, `ReducedBlock`), so the unsharded
`PackedDecoder` stays as it is. A row-parallel bias is added once, after the reduce.
A fused qkv_proj (Phi-3) has no split yet: `shard_model` refuses it, naming the class.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from tideflow.models.loader import check_divisible

AllReduce = Callable[[torch.Tensor], None]  # sums a tensor over the ranks, in place

_FIELD = "tensor_parallel_size"


def shard_model(model: torch.nn.Module, rank: int, world: int) -> None:
    """Narrow `model`'s layers in place to rank `rank` of `world` (see the module docstring).
    Raises ValueError naming `tensor_parallel_size` when a size does not divide, or when a
    layer has a form this split does not know."""
    if not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, {world}), got {rank}")
    check_divisible(model.config, world)
    with torch.no_grad():
        for layer in model.model.layers:
            _shard_attention(layer.self_attn, rank, world)
            _shard_mlp(layer.mlp, rank, world)


def shard_decoder(
    model: torch.nn.Module, attend: Callable, rank: int, world: int, all_reduce: AllReduce, *, narrowed: bool = False
):
    """A `PackedDecoder` of rank `rank`'s shard of `model` (narrowed in place, unless
    `narrowed` says `shard_model` already did), whose attention output projection, MLP and MoE
    blocks sum their partial outputs with `all_reduce`."""
    from tideflow.models.packed_decoder import PackedDecoder

    if not narrowed:
        shard_model(model, rank, world)
    decoder = PackedDecoder(model, attend)
    for layer in decoder.layers:
        layer.o_proj = RowParallel(layer.o_proj, all_reduce)
        if layer.gate_up_weight is None:
            layer.mlp = ReducedBlock(layer.mlp, all_reduce)
        else:
            layer.mlp.down_proj = RowParallel(layer.mlp.down_proj, all_reduce)
    return decoder


class RowParallel(torch.nn.Module):
    """A linear layer holding some input columns: `all_reduce(x @ W_part.T) + bias`."""

    def __init__(self, linear: torch.nn.Linear, all_reduce: AllReduce):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.all_reduce = all_reduce

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight)
        self.all_reduce(out)
        return out if self.bias is None else out + self.bias


class ReducedBlock(torch.nn.Module):
    """An MoE block whose experts hold part of their intermediate dimension: its output summed
    over the ranks (a tuple output has its first element reduced)."""

    def __init__(self, block: torch.nn.Module, all_reduce: AllReduce):
        super().__init__()
        self.block = block
        self.all_reduce = all_reduce

    def forward(self, x: torch.Tensor):
        out = self.block(x)
        self.all_reduce(out[0] if isinstance(out, tuple) else out)
        return out


def _part(size: int, rank: int, world: int) -> slice:
    step = size // world
    return slice(rank * step, (rank + 1) * step)


def _param(t: torch.Tensor) -> torch.nn.Parameter:
    return torch.nn.Parameter(t.contiguous().clone(), requires_grad=False)


def _keep_rows(linear: torch.nn.Linear, rows: slice) -> None:
    linear.weight = _param(linear.weight[rows])
    if linear.bias is not None:
        linear.bias = _param(linear.bias[rows])
    linear.out_features = linear.weight.shape[0]


def _keep_columns(linear: torch.nn.Linear, cols: slice, zero_bias: bool) -> None:
    """Input columns `cols`. A bias stays whole: `RowParallel` adds it after the reduce; inside
    a block reduced as a whole (`zero_bias`, on ranks other than 0) it becomes zeros, so the
    sum over the ranks counts it once."""
    linear.weight = _param(linear.weight[:, cols])
    if linear.bias is not None and zero_bias:
        linear.bias = _param(torch.zeros_like(linear.bias))
    linear.in_features = linear.weight.shape[1]


def _shard_attention(attn, rank: int, world: int) -> None:
    if not all(hasattr(attn, p) for p in ("q_proj", "k_proj", "v_proj")):
        raise ValueError(f"{_FIELD} > 1: no tensor-parallel split is known for {type(attn).__name__} (a fused qkv_proj)")
    d = attn.head_dim
    heads, kv_heads = attn.q_proj.out_features // d, attn.k_proj.out_features // d
    q = _part(heads, rank, world)
    kv = _part(kv_heads, rank, world)
    _keep_rows(attn.q_proj, slice(q.start * d, q.stop * d))
    _keep_rows(attn.k_proj, slice(kv.start * d, kv.stop * d))
    _keep_rows(attn.v_proj, slice(kv.start * d, kv.stop * d))
    _keep_columns(attn.o_proj, slice(q.start * d, q.stop * d), zero_bias=False)
    for name, value in (("num_heads", heads // world), ("num_key_value_heads", kv_heads // world)):
        if hasattr(attn, name):
            setattr(attn, name, value)


def _shard_dense(mlp, rank: int, world: int, in_block: bool = False) -> None:
    """`in_block`: a shared expert, reduced with its MoE block rather than by `RowParallel`."""
    part = _part(mlp.gate_proj.out_features, rank, world)
    _keep_rows(mlp.gate_proj, part)
    _keep_rows(mlp.up_proj, part)
    _keep_columns(mlp.down_proj, part, zero_bias=in_block and rank != 0)
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = part.stop - part.start


def _shard_mlp(mlp, rank: int, world: int) -> None:
    if all(hasattr(mlp, p) for p in ("gate_proj", "up_proj", "down_proj")):
        _shard_dense(mlp, rank, world)
        return
    experts = getattr(mlp, "experts", None)
    if experts is None or not hasattr(experts, "gate_up_proj"):
        raise ValueError(f"{_FIELD} > 1: no tensor-parallel split is known for {type(mlp).__name__}")
    _shard_experts(experts, rank, world)
    shared = getattr(mlp, "shared_expert", None)
    if shared is not None:
        _shard_dense(shared, rank, world, in_block=True)


def _shard_experts(experts, rank: int, world: int) -> None:
    """Each expert's intermediate dimension: the same rows of gate and of up ([gate; up]
    concatenated), the same columns of down. Weights are [E, out, in], or [E, in, out] when
    `is_transposed`."""
    if not getattr(experts, "has_gate", True) or not getattr(experts, "is_concatenated", True):
        raise ValueError(f"{_FIELD} > 1: experts of {type(experts).__name__} are not a concatenated [gate; up] layout")
    if getattr(experts, "has_post_expert_norm", False):
        raise ValueError(f"{_FIELD} > 1: experts of {type(experts).__name__} normalise each expert's output")
    transposed = getattr(experts, "is_transposed", False)
    out_dim = -1 if transposed else -2  # where gate_up_proj's output rows and down_proj's inputs lie
    inter = experts.gate_up_proj.shape[out_dim] // 2
    part = _part(inter, rank, world)
    rows = torch.cat([torch.arange(part.start, part.stop), inter + torch.arange(part.start, part.stop)])
    experts.gate_up_proj = _param(experts.gate_up_proj.index_select(out_dim % 3, rows))
    down_in = -2 if transposed else -1
    experts.down_proj = _param(experts.down_proj.index_select(down_in % 3, torch.arange(part.start, part.stop)))
    if getattr(experts, "has_bias", False):
        experts.gate_up_proj_bias = _param(experts.gate_up_proj_bias.index_select(1, rows))
        if rank != 0:
            experts.down_proj_bias = _param(torch.zeros_like(experts.down_proj_bias))
    if hasattr(experts, "intermediate_dim"):
        experts.intermediate_dim = part.stop - part.start
