"""The numba paged decode attention against its torch reference, on fresh random inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.kernels.paged_cases import block_tables, paged_cache, queries
from tideflow.kernels.paged_decode import paged_decode, paged_decode_ref


def _case(rng, dtype, gqa, head_dim, rows=6, block_size=16, num_blocks=64):
    kv_heads = 2
    k, v = paged_cache(rng, dtype, kv_heads, head_dim, block_size, num_blocks)
    lens = rng.integers(1, 7 * block_size, rows)  # not multiples of the block size
    lens[0] = 1
    tables = block_tables(rng, lens, block_size, num_blocks)
    return queries(rng, rows, kv_heads * gqa, head_dim, dtype), k, v, tables, torch.from_numpy(lens)


@pytest.mark.parametrize("gqa", [1, 2, 4, 8])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("window", [0, 21])
def test_matches_reference(gqa, head_dim, dtype, rtol, window):
    rng = np.random.default_rng()  # fresh inputs every run
    q, k, v, tables, lens = _case(rng, dtype, gqa, head_dim)
    scale = head_dim**-0.5
    expected = paged_decode_ref(q, k, v, tables, lens, scale, window)
    out = torch.full_like(q, float("nan"))  # poisoned: every element must be written
    got = paged_decode(q, k, v, tables, lens, scale, window, out=out)
    assert got is out and not torch.isnan(got).any()
    torch.testing.assert_close(got, expected, rtol=rtol, atol=rtol)


def test_window_never_reads_released_blocks():
    """Blocks wholly before the window may be given back: their table entries become -1."""
    rng = np.random.default_rng()
    q, k, v, tables, lens = _case(rng, torch.float64, 2, 64, block_size=4)
    window = 9
    expected = paged_decode(q, k, v, tables, lens, 0.125, window)
    released = tables.clone()
    for row, length in enumerate(lens.tolist()):
        released[row, : max(length - window, 0) // 4] = -1
    torch.testing.assert_close(paged_decode(q, k, v, released, lens, 0.125, window), expected, rtol=1e-12, atol=1e-12)


def test_rejects_bad_inputs():
    rng = np.random.default_rng(0)
    q, k, v, tables, lens = _case(rng, torch.float32, 2, 64)
    with pytest.raises(ValueError, match="share float32 or float64"):
        paged_decode(q.double(), k, v, tables, lens, 0.1)
    with pytest.raises(ValueError, match=r"q must be \[rows, heads, head_dim\]"):
        paged_decode(q[0], k, v, tables, lens, 0.1)
    with pytest.raises(ValueError, match="one block table row"):
        paged_decode(q, k, v, tables[:2], lens, 0.1)
    with pytest.raises(ValueError, match="int32 or int64"):
        paged_decode(q, k, v, tables, lens.float(), 0.1)
    with pytest.raises(ValueError, match="window must be >= 0"):
        paged_decode(q, k, v, tables, lens, 0.1, window=-1)
    with pytest.raises(ValueError, match="must be contiguous"):
        paged_decode(q, k.transpose(1, 2), v.transpose(1, 2), tables, lens, 0.1)


def test_balanced_order_pairs_long_with_short_rows():
    from tideflow.kernels.paged_decode import balanced_order

    lens = np.array([5, 100, 7, 60, 1, 30, 80])
    order = balanced_order(lens)
    assert sorted(order.tolist()) == list(range(len(lens)))
    got = lens[order].tolist()
    assert got == [100, 1, 80, 5, 60, 7, 30]
