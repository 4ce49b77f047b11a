"""Decode attention over the paged KV cache: one query token per sequence, attending to the
sequence's own blocks in place (no gather, no padding to the longest context).

- `paged_decode_ref`: the torch reference (gather the blocks, mask, SDPA).
- `_paged_decode_cpu`: numba, parallel over (sequence, KV head); each KV head serves its
  group of query heads (GQA), so each K/V row is read once per group, and accumulates in
  registers-sized local arrays rather than in the output.
- `paged_decode`: the checked entry point; CUDA tensors go to `kernels.cuda.attention`.

A sliding window `w > 0` (Mistral / Qwen2) limits the query at position p to keys p-w+1..p;
the kernel never reads blocks before the window, so the engine may free them.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
import torch.nn.functional as F

from tideflow.kernels.checks import check_cache, check_index, check_query, check_window


def paged_decode_ref(q, k_blocks, v_blocks, block_tables, context_lens, scale: float, window: int = 0) -> torch.Tensor:
    """q [B, H, D]; k/v_blocks [num_blocks, block_size, Hkv, D]; block_tables [B, max_blocks];
    context_lens [B]; window 0 = none. Returns [B, H, D]."""
    rows, max_len = block_tables.shape[0], block_tables.shape[1] * k_blocks.shape[1]
    tables = block_tables.long().clamp(min=0)  # freed (out-of-window) entries are masked below
    k = k_blocks[tables].reshape(rows, max_len, *k_blocks.shape[2:]).transpose(1, 2)
    v = v_blocks[tables].reshape(rows, max_len, *v_blocks.shape[2:]).transpose(1, 2)
    pos = torch.arange(max_len, device=q.device)[None, :]
    lens = context_lens.long()[:, None]
    valid = pos < lens
    if window:
        valid &= pos >= lens - window
    out = F.scaled_dot_product_attention(
        q.unsqueeze(2), k, v, attn_mask=valid[:, None, None, :], scale=scale, enable_gqa=q.shape[1] != k.shape[1]
    )
    return out.squeeze(2)


@numba.njit(parallel=True, cache=True, fastmath=True)
def _paged_decode_cpu(q, k_blocks, v_blocks, block_tables, context_lens, scale, window, out):  # pragma: no cover (jitted)
    rows, num_heads, dim = q.shape
    block_size, num_kv = k_blocks.shape[1], k_blocks.shape[2]
    group = num_heads // num_kv
    zero = q.dtype.type(0)
    for task in numba.prange(rows * num_kv):
        b = task // num_kv
        kh = task - b * num_kv
        length = context_lens[b]
        start = 0 if window <= 0 else max(0, length - window)
        qs = np.empty((group, dim), dtype=q.dtype)
        for g in range(group):
            for d in range(dim):
                qs[g, d] = q[b, kh * group + g, d] * scale
        # pass 1: scores of every key in the window (each K row read once for the whole group)
        scores = np.empty((group, length - start), dtype=q.dtype)
        for t in range(start, length):
            blk = block_tables[b, t // block_size]
            off = t % block_size
            for g in range(group):
                acc = zero
                for d in range(dim):
                    acc += qs[g, d] * k_blocks[blk, off, kh, d]
                scores[g, t - start] = acc
        # softmax per query head
        for g in range(group):
            top = scores[g, 0]
            for i in range(1, length - start):
                top = max(top, scores[g, i])
            total = zero
            for i in range(length - start):
                e = math.exp(scores[g, i] - top)
                scores[g, i] = e
                total += e
            inv = 1 / total
            for i in range(length - start):
                scores[g, i] *= inv
        # pass 2: probability-weighted V rows, accumulated locally (each V row read once)
        acc_v = np.zeros((group, dim), dtype=q.dtype)
        for t in range(start, length):
            blk = block_tables[b, t // block_size]
            off = t % block_size
            for g in range(group):
                p = scores[g, t - start]
                for d in range(dim):
                    acc_v[g, d] += p * v_blocks[blk, off, kh, d]
        for g in range(group):
            for d in range(dim):
                out[b, kh * group + g, d] = acc_v[g, d]


def paged_decode(q, k_blocks, v_blocks, block_tables, context_lens, scale: float, window: int = 0, out=None) -> torch.Tensor:
    """Checked entry point. Returns [B, H, D] (`out` if given). Every context length must be >= 1."""
    check_cache("paged_decode", k_blocks, v_blocks)
    check_query("paged_decode", q, k_blocks)
    rows = q.shape[0]
    if block_tables.dim() != 2 or block_tables.shape[0] != rows:
        raise ValueError(f"paged_decode: one block table row per query row, got {tuple(block_tables.shape)} for {rows} rows")
    check_index("paged_decode", "block_tables", block_tables, tuple(block_tables.shape), q.device)
    check_index("paged_decode", "context_lens", context_lens, (rows,), q.device)
    window = check_window("paged_decode", window)
    if out is None:
        out = torch.empty_like(q)
    elif out.shape != q.shape or out.dtype != q.dtype or not out.is_contiguous():
        raise ValueError(f"paged_decode: out must be a contiguous {tuple(q.shape)} {q.dtype} tensor")
    if q.is_cuda:
        from tideflow.kernels.cuda.attention import paged_decode_cuda

        return paged_decode_cuda(q, k_blocks, v_blocks, block_tables, context_lens, scale, window, out=out)
    _paged_decode_cpu(
        q.numpy(), k_blocks.numpy(), v_blocks.numpy(), block_tables.numpy(), context_lens.numpy(),
        float(scale), window, out.numpy(),
    )
    return out
