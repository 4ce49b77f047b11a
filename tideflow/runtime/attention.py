"""The `tideflow` attention function for `transformers.AttentionInterface`.

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


def torch_paged_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Reference implementation in plain torch. Returns ([1, tokens, heads, head_dim], None)."""
    meta: AttentionMetadata = kwargs["tideflow_meta"]
    layer = module.layer_idx
    q = query[0].transpose(0, 1)  # [T, H, D]
    k = key[0].transpose(0, 1)  # [T, Hkv, D]
    v = value[0].transpose(0, 1)
    cache = meta.kv_cache
    cache.k[layer].index_copy_(0, meta.slot_mapping, k)
    cache.v[layer].index_copy_(0, meta.slot_mapping, v)
    k_blocks, v_blocks = cache.blocks(layer)
    gqa = q.shape[1] != k.shape[1]
    out = torch.empty_like(q)

    for group in meta.decode_groups:
        bt = group.block_tables
        num_rows, max_len = bt.shape[0], bt.shape[1] * cache.block_size
        kd = k_blocks[bt].reshape(num_rows, max_len, *k.shape[1:]).transpose(1, 2)  # [B, Hkv, L, D]
        vd = v_blocks[bt].reshape(num_rows, max_len, *v.shape[1:]).transpose(1, 2)
        valid = torch.arange(max_len, device=q.device)[None, :] < group.context_lens[:, None]
        qd = q[group.token_idx].unsqueeze(2)  # [B, H, 1, D]
        od = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=valid[:, None, None, :], scale=scaling, enable_gqa=gqa)
        out[group.token_idx] = od.squeeze(2)

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
    return out.unsqueeze(0), None


_BACKENDS = {"torch": torch_paged_attention}


def register_attention(backend: str = "torch") -> str:
    """Register the chosen implementation under the `tideflow` name; returns that name."""
    from transformers import AttentionInterface

    try:
        fn = _BACKENDS[backend]
    except KeyError:
        raise ValueError(f"attention_backend must be one of {sorted(_BACKENDS)}, got {backend!r}") from None
    AttentionInterface.register(ATTENTION_NAME, fn)
    return ATTENTION_NAME
