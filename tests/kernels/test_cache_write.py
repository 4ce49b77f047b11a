"""The numba reshape_and_cache against its torch reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tideflow.kernels.cache_write import reshape_and_cache, reshape_and_cache_ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference_on_strided_input(dtype):
    rng = np.random.default_rng()
    tokens, heads, dim, slots = 37, 4, 64, 160
    # the projections come as a transposed view, as transformers hands them over
    k = torch.from_numpy(rng.standard_normal((heads, tokens, dim))).to(dtype).transpose(0, 1)
    v = torch.from_numpy(rng.standard_normal((heads, tokens, dim))).to(dtype).transpose(0, 1)
    slot_mapping = torch.from_numpy(rng.permutation(slots)[:tokens])
    slot_mapping[5] = -1  # padding: skipped
    k_cache, v_cache = (torch.from_numpy(rng.standard_normal((slots, heads, dim))).to(dtype) for _ in range(2))
    caches = [k_cache, v_cache, k_cache.clone(), v_cache.clone()]  # the untouched slots must stay as they are
    reshape_and_cache_ref(k, v, caches[0], caches[1], slot_mapping)
    reshape_and_cache(k, v, caches[2], caches[3], slot_mapping)
    assert torch.equal(caches[2], caches[0]) and torch.equal(caches[3], caches[1])
    assert torch.equal(caches[2][slot_mapping[6]], k[6])


def test_rejects_bad_inputs():
    k = torch.zeros(4, 2, 8)
    cache = torch.zeros(16, 2, 8)
    slots = torch.arange(4)
    with pytest.raises(ValueError, match="share a dtype"):
        reshape_and_cache(k.double(), k.double(), cache, cache.clone(), slots)
    with pytest.raises(ValueError, match=r"the caches must be \[slots, 2, 8\]"):
        reshape_and_cache(k, k, torch.zeros(16, 2, 4), torch.zeros(16, 2, 4), slots)
    with pytest.raises(ValueError, match="slot_mapping must have shape"):
        reshape_and_cache(k, k, cache, cache.clone(), slots[:3])
    with pytest.raises(ValueError, match="past the cache"):
        reshape_and_cache(k, k, cache, cache.clone(), slots + 13)
