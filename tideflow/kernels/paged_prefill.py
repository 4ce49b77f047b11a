"""Prefill attention over the paged KV cache: packed query chunks of several sequences, each
attending causally to its sequence's cached prefix plus itself, read from the blocks in place.

This is what chunked prefill and prefix-cache hits need: a chunk of q_len queries whose
sequence already holds `context_len - q_len` tokens in the cache. The step's own K/V must be
in the cache first (`reshape_and_cache`), so every key is read through the block table.

Query row i of sequence b (packed row cu_seqlens_q[b] + i) sits at position
p = context_lens[b] - q_len_b + i and attends to keys max(0, p - window + 1) .. p
(window 0 = no sliding window).

- `paged_prefill_ref`: the torch reference (gather each sequence's blocks, mask, SDPA).
- `_paged_prefill_cpu`: numba, parallel over (tile of query rows, KV head). Each task streams
  its keys block by block with an online softmax, so K/V are read once per tile and nothing of
  size [q_len, context] is materialised.
- `paged_prefill`: the checked entry point; CUDA tensors go to `kernels.cuda.attention`.
  On CPU it sends sequences with `SDPA_MIN_ROWS` query rows or more to gather + SDPA, whose
  blocked GEMMs win on long chunks, and the rest (prefix hits, short chunks) to the loop.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
import torch.nn.functional as F

from tideflow.kernels.checks import check_cache, check_index, check_query, check_window

TILE_ROWS = 16  # query rows per CPU task: enough to reuse each K/V row, small enough to balance cores
# From this many query rows of one sequence on, a blocked GEMM beats the row-at-a-time loop
# (`bench kernels`: 16 rows over 1024 cached, the loop is 1.9x faster than gather + SDPA;
# 256 rows over 768, 0.6x): such sequences gather their blocks and run SDPA instead.
SDPA_MIN_ROWS = 64
# fast-math without "no infinities": the running maximum starts at -inf
_FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}


def paged_prefill_ref(
    q, k_blocks, v_blocks, block_tables, cu_seqlens_q, context_lens, scale: float, window: int = 0
) -> torch.Tensor:
    """q [T, H, D] packed; block_tables [B, max_blocks]; cu_seqlens_q [B + 1]; context_lens [B].
    Returns [T, H, D]."""
    out = torch.empty_like(q)
    for b in range(block_tables.shape[0]):
        start, end = int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1])
        if end > start:
            out[start:end] = _gathered_sdpa(q[start:end], k_blocks, v_blocks, block_tables[b], int(context_lens[b]), scale, window)
    return out


def _gathered_sdpa(q, k_blocks, v_blocks, table, ctx: int, scale: float, window: int) -> torch.Tensor:
    """One sequence's query rows [n, H, D] (its last n positions) over its first `ctx` cached
    tokens: gather the blocks into contiguous K/V, then SDPA with a causal (windowed) mask."""
    block_size = k_blocks.shape[1]
    blocks = table[: -(-ctx // block_size)].long().clamp(min=0)
    k = k_blocks[blocks].reshape(-1, *k_blocks.shape[2:])[:ctx].transpose(0, 1)  # [Hkv, ctx, D]
    v = v_blocks[blocks].reshape(-1, *v_blocks.shape[2:])[:ctx].transpose(0, 1)
    q_pos = torch.arange(ctx - q.shape[0], ctx, device=q.device)[:, None]
    k_pos = torch.arange(ctx, device=q.device)[None, :]
    mask = k_pos <= q_pos
    if window:
        mask &= k_pos > q_pos - window
    gqa = q.shape[1] != k_blocks.shape[2]
    o = F.scaled_dot_product_attention(q.transpose(0, 1), k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)
    return o.transpose(0, 1)


@numba.njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _paged_prefill_cpu(
    q, k_blocks, v_blocks, block_tables, tile_seq, tile_row, tile_len, first_pos, scale, window, out
):  # pragma: no cover (jitted)
    """tile_* describe the tiles: sequence, first packed row, rows, position of the first row."""
    num_heads, dim = q.shape[1], q.shape[2]
    block_size, num_kv = k_blocks.shape[1], k_blocks.shape[2]
    group = num_heads // num_kv
    zero = q.dtype.type(0)
    neg_inf = -np.inf
    for task in numba.prange(tile_seq.shape[0] * num_kv):
        i = task // num_kv
        kh = task - i * num_kv
        b, row0, n_rows, pos0 = tile_seq[i], tile_row[i], tile_len[i], first_pos[i]
        n = n_rows * group  # local row r * group + g: query row r, head kh * group + g
        qs = np.empty((n, dim), dtype=q.dtype)
        for r in range(n_rows):
            for g in range(group):
                for d in range(dim):
                    qs[r * group + g, d] = q[row0 + r, kh * group + g, d] * scale
        acc = np.zeros((n, dim), dtype=q.dtype)
        top = np.full(n, neg_inf, dtype=q.dtype)
        total = np.zeros(n, dtype=q.dtype)
        s = np.empty((n, block_size), dtype=q.dtype)
        k_first = 0 if window <= 0 else max(0, pos0 - window + 1)
        k_last = pos0 + n_rows - 1
        for j in range(k_first // block_size, k_last // block_size + 1):
            blk = block_tables[b, j]
            t0 = max(j * block_size, k_first)
            t1 = min((j + 1) * block_size, k_last + 1)
            for x in range(n):
                p = pos0 + x // group
                lo = t0 if window <= 0 else max(t0, p - window + 1)
                hi = min(t1, p + 1)  # causal
                if lo >= hi:
                    continue
                chunk_top = neg_inf
                for t in range(lo, hi):
                    a = zero
                    for d in range(dim):
                        a += qs[x, d] * k_blocks[blk, t - j * block_size, kh, d]
                    s[x, t - t0] = a
                    chunk_top = max(chunk_top, a)
                new_top = max(top[x], chunk_top)
                fix = math.exp(top[x] - new_top)  # 0 on the first chunk (top = -inf)
                total[x] *= fix
                for d in range(dim):
                    acc[x, d] *= fix
                for t in range(lo, hi):
                    e = math.exp(s[x, t - t0] - new_top)
                    total[x] += e
                    for d in range(dim):
                        acc[x, d] += e * v_blocks[blk, t - j * block_size, kh, d]
                top[x] = new_top
        for r in range(n_rows):
            for g in range(group):
                x = r * group + g
                inv = 1 / total[x]
                for d in range(dim):
                    out[row0 + r, kh * group + g, d] = acc[x, d] * inv


def prefill_tiles(cu_seqlens_q: np.ndarray, context_lens: np.ndarray, tile_rows: int = TILE_ROWS):
    """Split each sequence's query rows into tiles: (sequence, first packed row, rows, first position)."""
    q_lens = np.diff(cu_seqlens_q)
    per_seq = -(-q_lens // tile_rows)
    seq = np.repeat(np.arange(len(q_lens)), per_seq)
    k = np.arange(len(seq)) - np.repeat(np.cumsum(per_seq) - per_seq, per_seq)  # tile index within its sequence
    row = cu_seqlens_q[:-1][seq] + k * tile_rows
    length = np.minimum(tile_rows, cu_seqlens_q[1:][seq] - row)
    first = context_lens[seq] - q_lens[seq] + k * tile_rows
    return seq.astype(np.int64), row.astype(np.int64), length.astype(np.int64), first.astype(np.int64)


def paged_prefill(
    q, k_blocks, v_blocks, block_tables, cu_seqlens_q, context_lens, scale: float, window: int = 0, out=None
) -> torch.Tensor:
    """Checked entry point. Returns [T, H, D] (`out` if given)."""
    name = "paged_prefill"
    check_cache(name, k_blocks, v_blocks)
    check_query(name, q, k_blocks)
    if block_tables.dim() != 2:
        raise ValueError(f"{name}: block_tables must be [sequences, blocks], got {tuple(block_tables.shape)}")
    seqs = block_tables.shape[0]
    check_index(name, "block_tables", block_tables, tuple(block_tables.shape), q.device)
    check_index(name, "cu_seqlens_q", cu_seqlens_q, (seqs + 1,), q.device)
    check_index(name, "context_lens", context_lens, (seqs,), q.device)
    window = check_window(name, window)
    if out is None:
        out = torch.empty_like(q)
    elif out.shape != q.shape or out.dtype != q.dtype or not out.is_contiguous():
        raise ValueError(f"{name}: out must be a contiguous {tuple(q.shape)} {q.dtype} tensor")
    if q.is_cuda:
        from tideflow.kernels.cuda.attention import paged_prefill_cuda

        return paged_prefill_cuda(q, k_blocks, v_blocks, block_tables, cu_seqlens_q, context_lens, scale, window, out=out)
    cu, ctx = cu_seqlens_q.numpy().astype(np.int64), context_lens.numpy().astype(np.int64)
    q_lens = np.diff(cu)
    if cu[0] != 0 or cu[-1] != q.shape[0] or (q_lens < 0).any():
        raise ValueError(f"{name}: cu_seqlens_q must rise from 0 to the {q.shape[0]} packed rows")
    if (q_lens > ctx).any() or (-(-ctx // k_blocks.shape[1]) > block_tables.shape[1]).any():
        raise ValueError(f"{name}: each context must hold its queries and fit its block table row")
    long = q_lens >= SDPA_MIN_ROWS
    for b in np.flatnonzero(long):
        out[cu[b] : cu[b + 1]] = _gathered_sdpa(q[cu[b] : cu[b + 1]], k_blocks, v_blocks, block_tables[b], int(ctx[b]), scale, window)
    if long.all():
        return out
    tiles = prefill_tiles(cu, ctx)
    keep = ~long[tiles[0]]
    _paged_prefill_cpu(
        q.numpy(), k_blocks.numpy(), v_blocks.numpy(), block_tables.numpy(), *(t[keep] for t in tiles), float(scale), window,
        out.numpy(),
    )
    return out


def bench_cases() -> list[tuple[str, object, object]]:
    """(name, kernel, reference) for the two uses, 4 sequences, 8 KV heads of 64 (GQA 4),
    float32: chunked prefill (256-token chunks over 768 cached tokens, half of a 2048-token
    step) and prefix hits (16 new tokens over 1024 cached)."""
    return [_bench_case(4, 256, 768, "chunked prefill"), _bench_case(4, 16, 1024, "prefix hit")]


def _bench_case(seqs: int, chunk: int, cached: int, label: str) -> tuple[str, object, object]:
    gen = torch.Generator().manual_seed(0)
    kv_heads, heads, dim, block_size = 8, 32, 64, 16
    per_seq = -(-(cached + chunk) // block_size)
    k = torch.randn(seqs * per_seq + 64, block_size, kv_heads, dim, generator=gen)
    v = torch.randn_like(k)
    tables = torch.randperm(k.shape[0], generator=gen)[: seqs * per_seq].view(seqs, per_seq)
    cu = torch.arange(seqs + 1, dtype=torch.int64) * chunk
    lens = torch.full((seqs,), cached + chunk, dtype=torch.int64)
    q = torch.randn(seqs * chunk, heads, dim, generator=gen)
    out = torch.empty_like(q)
    args = (q, k, v, tables, cu, lens, dim**-0.5)
    return (f"paged prefill, {label}: {seqs}x{chunk} over {cached}", lambda: paged_prefill(*args, out=out),
            lambda: paged_prefill_ref(*args))
