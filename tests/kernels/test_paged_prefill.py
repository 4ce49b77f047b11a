"""The numba paged prefill attention against its torch reference: packed chunks of several
sequences attending to cached prefixes plus themselves, with and without a sliding window."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.kernels.paged_cases import block_tables, paged_cache, queries
from tideflow.kernels.paged_prefill import paged_prefill, paged_prefill_ref, prefill_tiles


def _case(rng, dtype, gqa, head_dim, block_size=16, num_blocks=128):
    kv_heads = 2
    k, v = paged_cache(rng, dtype, kv_heads, head_dim, block_size, num_blocks)
    # a fresh prompt (nothing cached), a one-token chunk, a prefix hit, and long chunks; the
    # last one is long enough (>= SDPA_MIN_ROWS) for the gather + SDPA path
    q_lens = np.array([37, 1, 20, 45, 2, 70])
    cached = np.array([0, 50, 32, rng.integers(1, 60), rng.integers(1, 60), rng.integers(1, 60)])
    context = cached + q_lens
    tables = block_tables(rng, context, block_size, num_blocks)
    cu = torch.from_numpy(np.concatenate([[0], np.cumsum(q_lens)]))
    q = queries(rng, int(q_lens.sum()), kv_heads * gqa, head_dim, dtype)
    return q, k, v, tables, cu, torch.from_numpy(context)


@pytest.mark.parametrize("gqa", [1, 2, 4, 8])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("window", [0, 19])
def test_matches_reference(gqa, head_dim, dtype, rtol, window):
    rng = np.random.default_rng()  # fresh inputs every run
    q, k, v, tables, cu, ctx = _case(rng, dtype, gqa, head_dim)
    scale = head_dim**-0.5
    expected = paged_prefill_ref(q, k, v, tables, cu, ctx, scale, window)
    out = torch.full_like(q, float("nan"))  # poisoned
    got = paged_prefill(q, k, v, tables, cu, ctx, scale, window, out=out)
    assert got is out and not torch.isnan(got).any()
    torch.testing.assert_close(got, expected, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("window", [0, 19])
def test_long_chunks_take_sdpa_and_agree_with_the_loop(monkeypatch, window):
    """Sequences with SDPA_MIN_ROWS query rows or more go to gather + SDPA, the rest to the
    numba loop, in one call; forcing every row through the loop gives the same output."""
    import tideflow.kernels.paged_prefill as pp

    assert pp.SDPA_MIN_ROWS <= 70 < 2 * pp.SDPA_MIN_ROWS
    rng = np.random.default_rng()
    q, k, v, tables, cu, ctx = _case(rng, torch.float64, 4, 64)
    mixed = paged_prefill(q, k, v, tables, cu, ctx, 0.125, window, out=torch.full_like(q, float("nan")))
    monkeypatch.setattr(pp, "SDPA_MIN_ROWS", 10**9)
    looped = paged_prefill(q, k, v, tables, cu, ctx, 0.125, window, out=torch.full_like(q, float("nan")))
    torch.testing.assert_close(mixed, looped, rtol=1e-12, atol=1e-12)


def test_a_fresh_prompt_equals_causal_attention():
    """With nothing cached, paged prefill is plain causal attention over the prompt's own K/V."""
    rng = np.random.default_rng()
    block_size, length, heads = 4, 23, 4
    k_rows = torch.from_numpy(rng.standard_normal((length, 2, 32)))
    v_rows = torch.from_numpy(rng.standard_normal((length, 2, 32)))
    q = torch.from_numpy(rng.standard_normal((length, heads, 32)))
    blocks = torch.from_numpy(rng.permutation(12)[:6])
    k_blocks = torch.zeros(12, block_size, 2, 32, dtype=torch.float64)
    v_blocks = torch.zeros_like(k_blocks)
    slots = blocks[torch.arange(length) // block_size] * block_size + torch.arange(length) % block_size
    k_blocks.view(-1, 2, 32)[slots] = k_rows
    v_blocks.view(-1, 2, 32)[slots] = v_rows
    got = paged_prefill(q, k_blocks, v_blocks, blocks[None], torch.tensor([0, length]), torch.tensor([length]), 0.2)
    expected = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k_rows.transpose(0, 1), v_rows.transpose(0, 1), is_causal=True, scale=0.2, enable_gqa=True
    ).transpose(0, 1)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_tiles_cover_every_query_row_once():
    cu = np.array([0, 37, 38, 58])
    ctx = np.array([37, 51, 52])
    seq, row, length, first = prefill_tiles(cu, ctx, tile_rows=16)
    covered = np.concatenate([np.arange(r, r + n) for r, n in zip(row, length)])
    assert sorted(covered.tolist()) == list(range(58))
    assert (length <= 16).all()
    # the first position of each tile: context - q_len + offset of the tile in its sequence
    np.testing.assert_array_equal(first, ctx[seq] - np.diff(cu)[seq] + (row - cu[:-1][seq]))


def test_rejects_bad_inputs():
    rng = np.random.default_rng(0)
    q, k, v, tables, cu, ctx = _case(rng, torch.float32, 2, 64)
    with pytest.raises(ValueError, match="share float32 or float64"):
        paged_prefill(q.half(), k, v, tables, cu, ctx, 0.1)
    with pytest.raises(ValueError, match="cu_seqlens_q must have shape"):
        paged_prefill(q, k, v, tables, cu[:-1], ctx, 0.1)
    with pytest.raises(ValueError, match="rise from 0"):
        paged_prefill(q, k, v, tables, cu + 1, ctx, 0.1)
    with pytest.raises(ValueError, match="each context must hold its queries"):
        paged_prefill(q, k, v, tables, cu, torch.ones_like(ctx), 0.1)
    with pytest.raises(ValueError, match="head_dim"):
        paged_prefill(q[:, :, :32], k, v, tables, cu, ctx, 0.1)
