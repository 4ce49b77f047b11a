"""Random paged-cache inputs shared by the attention kernels' tests: block tables with holes
(random, non-contiguous block ids), two sequences sharing prefix blocks, context lengths that
are not multiples of the block size. Fresh inputs every run unless a seed is given."""

from __future__ import annotations

import numpy as np
import torch


def paged_cache(rng, dtype, kv_heads, head_dim, block_size=16, num_blocks=64):
    shape = (num_blocks, block_size, kv_heads, head_dim)
    k = torch.from_numpy(rng.standard_normal(shape)).to(dtype)
    v = torch.from_numpy(rng.standard_normal(shape)).to(dtype)
    return k, v


def block_tables(rng, context_lens: np.ndarray, block_size: int, num_blocks: int) -> torch.Tensor:
    max_blocks = int(-(-context_lens.max() // block_size)) + 1
    tables = np.stack([rng.permutation(num_blocks)[:max_blocks] for _ in context_lens])
    if len(context_lens) > 2:
        tables[1, :2] = tables[2, :2]  # a shared prefix
    return torch.from_numpy(tables).to(torch.int64)


def queries(rng, rows, heads, head_dim, dtype) -> torch.Tensor:
    return torch.from_numpy(rng.standard_normal((rows, heads, head_dim))).to(dtype)
