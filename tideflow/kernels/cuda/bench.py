"""Decode attention bandwidth on a CUDA device, for `tideflow bench kernels`.

Decode attention reads the whole KV cache every step, so its yardstick is memory bandwidth:
the bytes it must move (K and V of every context, the queries and the outputs) over its time,
against what the same device reaches on a plain device-to-device copy. The issue's target is a
ratio of at least 0.6.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch

from tideflow.kernels.cuda.attention import paged_decode_cuda

_SLEEP_CYCLES = 2_000_000  # ~1 ms of GPU spin: covers the host's launch overhead (see _gpu_seconds)
_COPY_BYTES = 512 << 20  # large enough to be far past the L2 cache


def _gpu_seconds(fn: Callable[[], object], warmup: int = 3, iters: int = 25) -> float:
    """Median GPU time of fn(). A spin kernel queued first keeps the stream busy while Python
    enqueues the start event, fn's launches and the end event, so the events time the GPU work
    alone and not numba's per-launch host overhead."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(_SLEEP_CYCLES)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def copy_bandwidth(device: torch.device | str = "cuda") -> float:
    """Bytes per second of a large device-to-device copy, counting the read and the write."""
    src = torch.empty(_COPY_BYTES, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * _COPY_BYTES / _gpu_seconds(lambda: dst.copy_(src))


def decode_bandwidth(
    num_seqs: int = 32,
    context: int = 1024,
    kv_heads: int = 8,
    head_dim: int = 128,
    dtype: torch.dtype = torch.bfloat16,
    *,
    group: int = 4,
    block_size: int = 16,
    device: torch.device | str = "cuda",
) -> dict[str, float]:
    """Time `paged_decode_cuda` on `num_seqs` sequences of `context` tokens (blocks scattered
    through the cache, `group` query heads per KV head) and compare with the copy bandwidth.
    Returns achieved_GBps, copy_GBps and ratio = achieved / copy."""
    blocks_per_seq = -(-context // block_size)
    num_blocks = num_seqs * blocks_per_seq
    shape = (num_blocks, block_size, kv_heads, head_dim)
    k = torch.randn(shape, device=device, dtype=dtype)
    v = torch.randn(shape, device=device, dtype=dtype)
    tables = torch.randperm(num_blocks, device=device).view(num_seqs, blocks_per_seq)
    lens = torch.full((num_seqs,), context, dtype=torch.int64, device=device)
    q = torch.randn(num_seqs, kv_heads * group, head_dim, device=device, dtype=dtype)
    out = torch.empty_like(q)
    seconds = _gpu_seconds(lambda: paged_decode_cuda(q, k, v, tables, lens, head_dim**-0.5, out=out))
    moved = (2 * num_seqs * context * kv_heads * head_dim + 2 * q.numel()) * k.element_size()
    achieved, copy = moved / seconds, copy_bandwidth(device)
    return {"achieved_GBps": achieved / 1e9, "copy_GBps": copy / 1e9, "ratio": achieved / copy}
