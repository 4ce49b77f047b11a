"""Decode attention over the paged KV cache: one query token per sequence, attending to the
sequence's own blocks in place (no gather, no padding to the longest context).

- `paged_decode_ref`: the torch reference (gather the blocks, mask, SDPA).
- `_paged_decode_cpu`: numba, parallel over sequences. A task streams its sequence's tokens
  once, reading each token's K (then V) rows of all KV heads as one contiguous run, and serves
  every query head of a KV head's group from that read (GQA). Rows are dealt to threads in
  long/short pairs (`balanced_order`), since the engine hands them over sorted by length.
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
def _paged_decode_cpu(q, k_blocks, v_blocks, block_tables, context_lens, order, scale, window, out):  # pragma: no cover (jitted)
    rows, num_heads, dim = q.shape
    block_size, num_kv = k_blocks.shape[1], k_blocks.shape[2]
    group = num_heads // num_kv
    zero = q.dtype.type(0)
    for task in numba.prange(rows):
        b = order[task]
        length = context_lens[b]
        start = 0 if window <= 0 else max(0, length - window)
        n = length - start
        qs = np.empty((num_heads, dim), dtype=q.dtype)
        for h in range(num_heads):
            for d in range(dim):
                qs[h, d] = q[b, h, d] * scale
        # pass 1: scores of every key in the window; a token's K rows of all heads are contiguous
        scores = np.empty((num_heads, n), dtype=q.dtype)
        for t in range(start, length):
            blk = block_tables[b, t // block_size]
            off = t % block_size
            for h in range(num_heads):
                kh = h // group
                acc = zero
                for d in range(dim):
                    acc += qs[h, d] * k_blocks[blk, off, kh, d]
                scores[h, t - start] = acc
        # softmax per query head
        for h in range(num_heads):
            top = scores[h, 0]
            for i in range(1, n):
                top = max(top, scores[h, i])
            total = zero
            for i in range(n):
                e = math.exp(scores[h, i] - top)
                scores[h, i] = e
                total += e
            inv = 1 / total
            for i in range(n):
                scores[h, i] *= inv
        # pass 2: probability-weighted V rows, accumulated locally
        acc_v = np.zeros((num_heads, dim), dtype=q.dtype)
        for t in range(start, length):
            blk = block_tables[b, t // block_size]
            off = t % block_size
            for h in range(num_heads):
                kh = h // group
                p = scores[h, t - start]
                for d in range(dim):
                    acc_v[h, d] += p * v_blocks[blk, off, kh, d]
        for h in range(num_heads):
            for d in range(dim):
                out[b, h, d] = acc_v[h, d]


def balanced_order(context_lens: np.ndarray) -> np.ndarray:
    """Rows ordered longest, shortest, second longest, second shortest, ...: numba splits a
    prange into equal contiguous chunks, one per thread, and every chunk of this order holds
    whole (long, short) pairs, so threads get about equal work however the rows are sorted."""
    by_len = np.argsort(context_lens, kind="stable")[::-1]
    order = np.empty_like(by_len)
    half = (len(by_len) + 1) // 2
    order[0::2] = by_len[:half]
    order[1::2] = by_len[half:][::-1]
    return order


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
    lens = context_lens.numpy()
    _paged_decode_cpu(
        q.numpy(), k_blocks.numpy(), v_blocks.numpy(), block_tables.numpy(), lens, balanced_order(lens),
        float(scale), window, out.numpy(),
    )
    return out


def bench_cases() -> list[tuple[str, object, object]]:
    """(name, kernel, reference) at the issue's shape: 32 sequences x 1024 context, 8 KV heads
    of 128 (GQA 4), blocks of 16 scattered through the pool, float32."""
    gen = torch.Generator().manual_seed(0)
    seqs, context, kv_heads, heads, dim, block_size = 32, 1024, 8, 32, 128, 16
    per_seq = context // block_size
    k = torch.randn(seqs * per_seq + 64, block_size, kv_heads, dim, generator=gen)
    v = torch.randn_like(k)
    tables = torch.randperm(k.shape[0], generator=gen)[: seqs * per_seq].view(seqs, per_seq)
    lens = torch.full((seqs,), context, dtype=torch.int64)
    q = torch.randn(seqs, heads, dim, generator=gen)
    out = torch.empty_like(q)
    args = (q, k, v, tables, lens, dim**-0.5)
    return [(f"paged decode {seqs}x{context} kv{kv_heads}x{dim} gqa4", lambda: paged_decode(*args, out=out),
             lambda: paged_decode_ref(*args))]
