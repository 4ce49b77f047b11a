"""The fused residual-add + RMSNorm and rotary + cache-write kernels against their references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tideflow.kernels.norm_rope import add_rms_norm, add_rms_norm_ref, rope_and_cache, rope_and_cache_ref


def _randn(*shape, dtype=torch.float32, rng=np.random.default_rng(0)):
    return torch.from_numpy(rng.standard_normal(shape)).to(dtype)


@pytest.mark.parametrize("rows", [1, 7, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_add_rms_norm_matches_the_reference(rows, dtype):
    h, delta, weight = _randn(rows, 96, dtype=dtype) * 3, _randn(rows, 96, dtype=dtype), _randn(96, dtype=dtype)
    h_ref = h.clone()
    want = add_rms_norm_ref(h_ref, delta, weight, 1e-6)
    got = add_rms_norm(h, delta, weight, 1e-6)
    assert torch.equal(h, h_ref)  # the residual stream is updated in place, exactly
    torch.testing.assert_close(got, want, rtol=2e-6, atol=2e-6)


def test_add_rms_norm_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"h and delta \[T, hidden\]"):
        add_rms_norm(torch.zeros(3, 8), torch.zeros(3, 4), torch.zeros(8), 1e-6)


def _rope_case(tokens, heads=4, kv_heads=2, dim=16, slots=40, dtype=torch.float32):
    rng = np.random.default_rng(tokens)
    qkv = _randn(tokens, (heads + 2 * kv_heads) * dim, dtype=dtype, rng=rng)
    angles = _randn(tokens, dim // 2, dtype=dtype, rng=rng)
    cos, sin = torch.cat([angles.cos()] * 2, dim=-1), torch.cat([angles.sin()] * 2, dim=-1)
    slot_mapping = torch.from_numpy(rng.permutation(slots)[:tokens])
    if tokens > 2:
        slot_mapping[1] = -1  # padding: its row is rotated but not cached
    k_cache, v_cache = _randn(slots, kv_heads, dim, dtype=dtype, rng=rng), _randn(slots, kv_heads, dim, dtype=dtype, rng=rng)
    return qkv, cos, sin, heads, kv_heads, k_cache, v_cache, slot_mapping


@pytest.mark.parametrize("tokens", [1, 9])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rope_and_cache_matches_the_reference(tokens, dtype):
    qkv, cos, sin, heads, kv_heads, k_cache, v_cache, slots = _rope_case(tokens, dtype=dtype)
    ref = [qkv.clone(), k_cache.clone(), v_cache.clone()]
    rope_and_cache_ref(ref[0], cos, sin, heads, kv_heads, ref[1], ref[2], slots)
    untouched, before = k_cache.clone(), qkv.clone()
    rope_and_cache(qkv, cos, sin, heads, kv_heads, k_cache, v_cache, slots)
    torch.testing.assert_close(qkv, ref[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(k_cache, ref[1], rtol=1e-6, atol=1e-6)
    assert torch.equal(v_cache, ref[2])  # v is copied, not computed
    # q and k rotated in place, v not: v's columns are the input's
    dim = cos.shape[1]
    qk_end = (heads + kv_heads) * dim
    assert not torch.equal(qkv[:, :qk_end], before[:, :qk_end]) and torch.equal(qkv[:, qk_end:], before[:, qk_end:])
    live = slots >= 0
    others = torch.ones(k_cache.shape[0], dtype=torch.bool)
    others[slots[live]] = False
    assert torch.equal(k_cache[others], untouched[others])  # slots the step does not own stay as they were
    # the cached k rows are the rotated k heads of the qkv output
    t = int(torch.nonzero(live)[0])
    assert torch.equal(k_cache[slots[t]], qkv[t, heads * dim : (heads + kv_heads) * dim].view(kv_heads, dim))


def test_rope_and_cache_rejects_bad_inputs():
    qkv, cos, sin, heads, kv_heads, k_cache, v_cache, slots = _rope_case(4)
    with pytest.raises(ValueError, match="qkv must be"):
        rope_and_cache(qkv[:, :-1], cos, sin, heads, kv_heads, k_cache, v_cache, slots)
    with pytest.raises(ValueError, match="cos and sin must be"):
        rope_and_cache(qkv, cos[:2], sin[:2], heads, kv_heads, k_cache, v_cache, slots)
    with pytest.raises(ValueError, match="the caches must be"):
        rope_and_cache(qkv, cos, sin, heads, kv_heads, k_cache[:, :1], v_cache[:, :1], slots)
    with pytest.raises(ValueError, match="past the cache"):
        rope_and_cache(qkv, cos, sin, heads, kv_heads, k_cache, v_cache, slots.abs() + 100)
