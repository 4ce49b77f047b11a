"""The numba.cuda attention and cache-write kernels on a CUDA GPU, through the checked entry
points (`paged_decode`, `paged_prefill`, `reshape_and_cache` send CUDA tensors to
`tideflow.kernels.cuda.attention`), against the torch references on fresh inputs every run.

Outputs are poisoned (nan) before each launch. float32 is held to 1e-5 against a float64
reference; bf16 to 1e-2 and fp16 to 2e-3 against a float32 reference of the same rounded
inputs. Short contexts run in one partition; long contexts of a small batch are split across
partitions and combined. Block table entries wholly before a sliding window are freed (-1),
which the kernels must never read.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.kernels.paged_cases import block_tables, paged_cache, queries
from tideflow.kernels.cache_write import reshape_and_cache, reshape_and_cache_ref
from tideflow.kernels.paged_decode import paged_decode, paged_decode_ref
from tideflow.kernels.paged_prefill import paged_prefill, paged_prefill_ref

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

KV_HEADS, BLOCK_SIZE = 2, 16
# dtype -> (reference dtype, tolerance)
DTYPES = {
    torch.float32: (torch.float64, 1e-5),
    torch.bfloat16: (torch.float32, 1e-2),
    torch.float16: (torch.float32, 2e-3),
}


def _free_before_window(tables: torch.Tensor, first_pos: np.ndarray, window: int) -> torch.Tensor:
    """Mark blocks wholly before every query's window as freed (-1), as the engine does."""
    if not window:
        return tables
    index = torch.arange(tables.shape[1])[None, :]
    needed_from = torch.from_numpy(first_pos - window + 1)[:, None]
    return torch.where((index + 1) * BLOCK_SIZE <= needed_from, -1, tables)


def _check(got: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    assert not torch.isnan(got).any(), "an output element was never written"
    tol = DTYPES[dtype][1]
    torch.testing.assert_close(got.to(expected.dtype), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("gqa", [1, 2, 4, 8])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("window", [0, 37])
@pytest.mark.parametrize("long", [False, True], ids=["short", "long_split"])
def test_decode_matches_reference(dtype, gqa, head_dim, window, long):
    rng = np.random.default_rng()  # fresh inputs every run
    rows = 3 if long else 24
    lens = rng.integers(1500, 3000, rows) if long else rng.integers(1, 100, rows)
    if not long:
        lens[0] = 1  # a one-token context
    num_blocks = int(sum(-(-lens // BLOCK_SIZE))) + 8
    k, v = paged_cache(rng, dtype, KV_HEADS, head_dim, BLOCK_SIZE, num_blocks)
    tables = _free_before_window(block_tables(rng, lens, BLOCK_SIZE, num_blocks), lens - 1, window)
    q = queries(rng, rows, KV_HEADS * gqa, head_dim, dtype)
    q, k, v, tables, ctx = (t.cuda() for t in (q, k, v, tables, torch.from_numpy(lens)))
    scale = head_dim**-0.5
    ref_dtype = DTYPES[dtype][0]
    expected = paged_decode_ref(q.to(ref_dtype), k.to(ref_dtype), v.to(ref_dtype), tables, ctx, scale, window)
    out = torch.full_like(q, float("nan"))
    got = paged_decode(q, k, v, tables, ctx, scale, window, out=out)
    assert got is out
    _check(got, expected, dtype)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("gqa", [1, 2, 4, 8])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("window", [0, 19])
@pytest.mark.parametrize("long", [False, True], ids=["short", "long_split"])
def test_prefill_matches_reference(dtype, gqa, head_dim, window, long):
    rng = np.random.default_rng()
    # a fresh prompt, a one-token chunk, a prefix hit, long chunks; or a small chunk of a long context
    q_lens = np.array([3, 1]) if long else np.array([37, 1, 20, 45, 2])
    cached = rng.integers(1500, 3000, 2) if long else np.array([0, 50, 32, rng.integers(1, 60), rng.integers(1, 60)])
    lens = cached + q_lens
    num_blocks = int(sum(-(-lens // BLOCK_SIZE))) + 8
    k, v = paged_cache(rng, dtype, KV_HEADS, head_dim, BLOCK_SIZE, num_blocks)
    tables = _free_before_window(block_tables(rng, lens, BLOCK_SIZE, num_blocks), cached, window)
    cu = torch.from_numpy(np.concatenate([[0], np.cumsum(q_lens)]))
    q = queries(rng, int(q_lens.sum()), KV_HEADS * gqa, head_dim, dtype)
    q, k, v, tables, cu, ctx = (t.cuda() for t in (q, k, v, tables, cu, torch.from_numpy(lens)))
    scale = head_dim**-0.5
    ref_dtype = DTYPES[dtype][0]
    expected = paged_prefill_ref(q.to(ref_dtype), k.to(ref_dtype), v.to(ref_dtype), tables, cu, ctx, scale, window)
    out = torch.full_like(q, float("nan"))
    got = paged_prefill(q, k, v, tables, cu, ctx, scale, window, out=out)
    assert got is out
    _check(got, expected, dtype)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("head_dim", [64, 128])
def test_reshape_and_cache_matches_reference(dtype, head_dim):
    rng = np.random.default_rng()
    tokens, slots = 50, 64 * BLOCK_SIZE
    def randn(*shape):  # from the fresh numpy generator: torch's default seed is fixed
        return torch.from_numpy(rng.standard_normal(shape)).to(dtype).cuda()

    fused = randn(tokens, 4 * KV_HEADS, head_dim)  # q (2 heads), k, v of a QKV projection
    k, v = fused[:, 2 * KV_HEADS : 3 * KV_HEADS], fused[:, 3 * KV_HEADS :]
    slot_mapping = torch.from_numpy(rng.permutation(slots)[:tokens]).cuda()
    slot_mapping[rng.choice(tokens, 5, replace=False)] = -1  # padding rows are skipped
    k_cache, v_cache = randn(slots, KV_HEADS, head_dim), randn(slots, KV_HEADS, head_dim)
    k_want, v_want = k_cache.clone(), v_cache.clone()
    reshape_and_cache_ref(k, v, k_want, v_want, slot_mapping)
    reshape_and_cache(k, v, k_cache, v_cache, slot_mapping)
    assert torch.equal(k_cache, k_want) and torch.equal(v_cache, v_want)


def test_decode_runs_on_a_side_stream():
    """Work is queued on torch's current stream: results are ready once that stream is synced."""
    rng = np.random.default_rng()
    lens = rng.integers(1, 200, 8)
    k, v = paged_cache(rng, torch.bfloat16, KV_HEADS, 128, BLOCK_SIZE, 128)
    tables = block_tables(rng, lens, BLOCK_SIZE, 128)
    q = queries(rng, 8, KV_HEADS * 4, 128, torch.bfloat16)
    q, k, v, tables, ctx = (t.cuda() for t in (q, k, v, tables, torch.from_numpy(lens)))
    expected = paged_decode_ref(q.float(), k.float(), v.float(), tables, ctx, 0.1)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = paged_decode(q, k, v, tables, ctx, 0.1)
    stream.synchronize()
    _check(got, expected, torch.bfloat16)


def test_decode_bandwidth_reports_a_ratio():
    from tideflow.kernels.cuda.bench import decode_bandwidth

    result = decode_bandwidth(num_seqs=4, context=300, kv_heads=2, head_dim=64)
    assert result["achieved_GBps"] > 0 and result["copy_GBps"] > 0
    assert result["ratio"] == pytest.approx(result["achieved_GBps"] / result["copy_GBps"])
