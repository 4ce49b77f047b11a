"""The numba paged decode attention against its torch reference, on fresh random inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tideflow.kernels.paged_decode import paged_decode, paged_decode_ref


def _case(rng, dtype, gqa, head_dim, rows=6, block_size=16, num_blocks=64):
    kv_heads = 2
    heads = kv_heads * gqa
    k = torch.from_numpy(rng.standard_normal((num_blocks, block_size, kv_heads, head_dim))).to(dtype)
    v = torch.from_numpy(rng.standard_normal((num_blocks, block_size, kv_heads, head_dim))).to(dtype)
    lens = torch.from_numpy(rng.integers(1, 7 * block_size, rows)).to(torch.int64)  # not multiples of the block size
    lens[0] = 1
    max_blocks = int(-(-lens.max() // block_size)) + 1
    # block tables with holes: random, non-contiguous block ids; two rows share their first blocks (a prefix)
    tables = torch.from_numpy(np.stack([rng.permutation(num_blocks)[:max_blocks] for _ in range(rows)])).to(torch.int64)
    tables[1, :2] = tables[2, :2]
    q = torch.from_numpy(rng.standard_normal((rows, heads, head_dim))).to(dtype)
    return q, k, v, tables, lens


@pytest.mark.parametrize("gqa", [1, 2, 4, 8])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_matches_reference(gqa, head_dim, dtype, rtol):
    rng = np.random.default_rng()  # fresh inputs every run
    q, k, v, tables, lens = _case(rng, dtype, gqa, head_dim)
    scale = head_dim**-0.5
    expected = paged_decode_ref(q, k, v, tables, lens, scale)
    out = torch.full_like(q, float("nan"))  # poisoned: every element must be written
    got = paged_decode(q, k, v, tables, lens, scale, out=out)
    assert got is out and not torch.isnan(got).any()
    torch.testing.assert_close(got, expected, rtol=rtol, atol=rtol)


def test_rejects_bad_inputs():
    rng = np.random.default_rng(0)
    q, k, v, tables, lens = _case(rng, torch.float32, 2, 64)
    with pytest.raises(ValueError, match="share float32 or float64"):
        paged_decode(q.double(), k, v, tables, lens, 0.1)
    with pytest.raises(ValueError, match="bad shapes"):
        paged_decode(q[0], k, v, tables, lens, 0.1)
    with pytest.raises(ValueError, match="one block table row"):
        paged_decode(q, k, v, tables[:2], lens, 0.1)
