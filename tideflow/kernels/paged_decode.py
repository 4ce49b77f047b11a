"""Decode attention over the paged KV cache: one query token per sequence, attending to the
sequence's own blocks in place (no gather, no padding to the longest context).

- `paged_decode_ref`: the torch reference (gather the blocks, mask, SDPA).
- `_paged_decode_cpu`: numba, parallel over (sequence, KV head); each KV head serves its
  group of query heads (GQA), so each K/V row is read once per group.
- `paged_decode`: the checked entry point.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
import torch.nn.functional as F


def paged_decode_ref(q, k_blocks, v_blocks, block_tables, context_lens, scale: float) -> torch.Tensor:
    """q [B, H, D]; k/v_blocks [num_blocks, block_size, Hkv, D]; block_tables [B, max_blocks];
    context_lens [B]. Returns [B, H, D]."""
    rows, max_len = block_tables.shape[0], block_tables.shape[1] * k_blocks.shape[1]
    k = k_blocks[block_tables].reshape(rows, max_len, *k_blocks.shape[2:]).transpose(1, 2)
    v = v_blocks[block_tables].reshape(rows, max_len, *v_blocks.shape[2:]).transpose(1, 2)
    valid = torch.arange(max_len, device=q.device)[None, :] < context_lens[:, None]
    out = F.scaled_dot_product_attention(
        q.unsqueeze(2), k, v, attn_mask=valid[:, None, None, :], scale=scale, enable_gqa=q.shape[1] != k.shape[1]
    )
    return out.squeeze(2)


@numba.njit(parallel=True, cache=True, fastmath=True)
def _paged_decode_cpu(q, k_blocks, v_blocks, block_tables, context_lens, scale, out):  # pragma: no cover (jitted)
    rows, num_heads, dim = q.shape
    block_size, num_kv = k_blocks.shape[1], k_blocks.shape[2]
    group = num_heads // num_kv
    for task in numba.prange(rows * num_kv):
        b = task // num_kv
        kh = task - b * num_kv
        length = context_lens[b]
        scores = np.empty((group, length), dtype=q.dtype)
        for t in range(length):
            blk = block_tables[b, t // block_size]
            off = t - (t // block_size) * block_size
            for g in range(group):
                h = kh * group + g
                acc = q.dtype.type(0)
                for d in range(dim):
                    acc += q[b, h, d] * k_blocks[blk, off, kh, d]
                scores[g, t] = acc * scale
        for g in range(group):
            h = kh * group + g
            top = scores[g, 0]
            for t in range(1, length):
                top = max(top, scores[g, t])
            total = q.dtype.type(0)
            for t in range(length):
                scores[g, t] = math.exp(scores[g, t] - top)
                total += scores[g, t]
            for d in range(dim):
                out[b, h, d] = 0
            for t in range(length):
                blk = block_tables[b, t // block_size]
                off = t - (t // block_size) * block_size
                p = scores[g, t] / total
                for d in range(dim):
                    out[b, h, d] += p * v_blocks[blk, off, kh, d]


def paged_decode(q, k_blocks, v_blocks, block_tables, context_lens, scale: float, out=None) -> torch.Tensor:
    """Checked entry point; CPU tensors run the numba kernel. Returns [B, H, D] (`out` if given)."""
    if q.dim() != 3 or k_blocks.dim() != 4 or k_blocks.shape != v_blocks.shape:
        raise ValueError(f"paged_decode: bad shapes q {tuple(q.shape)}, k {tuple(k_blocks.shape)}, v {tuple(v_blocks.shape)}")
    rows, heads, dim = q.shape
    if k_blocks.shape[3] != dim or heads % k_blocks.shape[2]:
        raise ValueError(f"paged_decode: head_dim {dim} / heads {heads} do not fit KV heads of shape {tuple(k_blocks.shape)}")
    if q.dtype != k_blocks.dtype or q.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"paged_decode: q and cache must share float32 or float64, got {q.dtype} and {k_blocks.dtype}")
    if block_tables.shape[0] != rows or context_lens.shape != (rows,):
        raise ValueError("paged_decode: one block table row and one context length per query row")
    if not (k_blocks.is_contiguous() and v_blocks.is_contiguous()):
        raise ValueError("paged_decode: the cache must be contiguous")
    if q.device.type != "cpu":
        return paged_decode_ref(q, k_blocks, v_blocks, block_tables, context_lens, scale)
    if out is None:
        out = torch.empty_like(q)
    _paged_decode_cpu(
        q.contiguous().numpy(), k_blocks.numpy(), v_blocks.numpy(), block_tables.numpy(), context_lens.numpy(),
        scale, out.numpy(),
    )
    return out
