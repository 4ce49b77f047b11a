"""The `tideflow` attention functions for `transformers.AttentionInterface`.

transformers calls it once per layer with q/k/v of a packed, padding-free batch
(`[1, heads, total_tokens, head_dim]`: every sequence of the step concatenated). It writes
the step's K/V into the paged cache at the slot mapping, then computes causal attention of
each sequence over its own block table. The per-step metadata arrives as the `tideflow_meta`
keyword of the model call, which transformers forwards to every attention layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

ATTENTION_NAME = "tideflow"
DEFAULT_BACKEND = "numba"


@dataclass(slots=True)
class PagedKVCache:
    """K and V slots of every layer: [num_layers, num_blocks * block_size, kv_heads, head_dim] each."""

    k: torch.Tensor
    v: torch.Tensor
    block_size: int

    @classmethod
    def allocate(cls, num_layers, num_blocks, block_size, kv_heads, head_dim, dtype, device) -> "PagedKVCache":
        shape = (num_layers, num_blocks * block_size, kv_heads, head_dim)
        return cls(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device), block_size)

    def blocks(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's cache viewed as [num_blocks, block_size, kv_heads, head_dim]."""
        k, v = self.k[layer], self.v[layer]
        shape = (-1, self.block_size, k.shape[-2], k.shape[-1])
        return k.view(shape), v.view(shape)


@dataclass(slots=True)
class AttentionMetadata:
    """Where each token of the packed batch belongs. Rows are sequences; tokens are packed."""

    kv_cache: PagedKVCache
    slot_mapping: torch.Tensor  # [num_tokens] int64: token -> cache slot (block * block_size + offset)
    # decode rows (one query token each), sorted by context length and attended in groups, so
    # that padding each group to its longest context wastes little
    decode_groups: list["DecodeGroup"]
    # prefill rows (several query tokens), attended one by one
    prefills: list[tuple[int, int, int, torch.Tensor | None]]  # (token start, query length, computed before, block ids or None)


@dataclass(slots=True)
class DecodeGroup:
    token_idx: torch.Tensor  # [rows] int64: packed index of each row's query token
    block_tables: torch.Tensor  # [rows, blocks] int64: enough blocks for the group's longest context, padded with 0
    context_lens: torch.Tensor  # [rows] int64: tokens attended (cached + this one)


def _write_cache(meta: AttentionMetadata, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
    meta.kv_cache.k[layer].index_copy_(0, meta.slot_mapping, k)
    meta.kv_cache.v[layer].index_copy_(0, meta.slot_mapping, v)


def _prefill(meta: AttentionMetadata, q, k, v, k_blocks, v_blocks, scaling, out) -> None:
    gqa = q.shape[1] != k.shape[1]
    for start, q_len, computed, blocks in meta.prefills:
        qp = q[start : start + q_len].transpose(0, 1)  # [H, n, D]
        if computed == 0:  # the whole context is in this step's packed K/V
            kp = k[start : start + q_len].transpose(0, 1)
            vp = v[start : start + q_len].transpose(0, 1)
            op = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, scale=scaling, enable_gqa=gqa)
        else:  # a chunk or a prefix hit: attend over the cached prefix plus itself
            ctx = computed + q_len
            kp = k_blocks[blocks].reshape(-1, *k.shape[1:])[:ctx].transpose(0, 1)
            vp = v_blocks[blocks].reshape(-1, *v.shape[1:])[:ctx].transpose(0, 1)
            q_pos = torch.arange(computed, ctx, device=q.device)
            mask = torch.arange(ctx, device=q.device)[None, :] <= q_pos[:, None]
            op = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask, scale=scaling, enable_gqa=gqa)
        out[start : start + q_len] = op.transpose(0, 1)


def _paged_attention(decode_fn):
    """An attention function for transformers from a decode implementation
    `decode_fn(q [B, H, D], k_blocks, v_blocks, block_tables, context_lens, scale) -> [B, H, D]`."""

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        meta: AttentionMetadata = kwargs["tideflow_meta"]
        layer = module.layer_idx
        q = query[0].transpose(0, 1)  # [T, H, D]
        k = key[0].transpose(0, 1)  # [T, Hkv, D]
        v = value[0].transpose(0, 1)
        _write_cache(meta, layer, k, v)
        k_blocks, v_blocks = meta.kv_cache.blocks(layer)
        out = torch.empty_like(q)
        for group in meta.decode_groups:
            out[group.token_idx] = decode_fn(
                q[group.token_idx], k_blocks, v_blocks, group.block_tables, group.context_lens, scaling
            )
        _prefill(meta, q, k, v, k_blocks, v_blocks, scaling, out)
        return out.unsqueeze(0), None  # [1, T, H, D]

    return attention


def _torch_backend():
    from tideflow.kernels.paged_decode import paged_decode_ref

    return _paged_attention(paged_decode_ref)


def _numba_backend():
    from tideflow.kernels.paged_decode import paged_decode

    return _paged_attention(paged_decode)


# backend -> (factory of the attention function, decode rows per group: None = all in one)
# torch pads each group to its longest context, so it sorts rows and keeps groups small;
# the numba kernel reads each sequence's own blocks in place and takes all rows at once.
BACKENDS = {"torch": (_torch_backend, 8), "numba": (_numba_backend, None)}


def register_attention(backend: str = "numba") -> str:
    """Register the backend's attention function with transformers; returns the name to load
    models with (`tideflow` for the default backend, `tideflow-<backend>` for the others)."""
    from transformers import AttentionInterface

    try:
        factory, _ = BACKENDS[backend]
    except KeyError:
        raise ValueError(f"attention_backend must be one of {sorted(BACKENDS)}, got {backend!r}") from None
    name = ATTENTION_NAME if backend == DEFAULT_BACKEND else f"{ATTENTION_NAME}-{backend}"
    AttentionInterface.register(name, factory())
    return name
