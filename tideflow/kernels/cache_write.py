"""`reshape_and_cache`: write one step's K/V rows into the paged cache at their slots.

The packed K/V of a step ([tokens, kv_heads, head_dim], usually a strided view of the
projection output) go to slot `slot_mapping[t]` = block * block_size + offset of the flat
cache [slots, kv_heads, head_dim]. A negative slot skips the row (padding).

- `reshape_and_cache_ref`: the torch reference (`index_copy_` of the rows with a slot).
- `_reshape_and_cache_cpu`: numba, reading the strided input in place. Serial: a step writes
  at most a few MB, less than what waking a second thread costs.
- `reshape_and_cache`: the checked entry point; CUDA tensors go to `kernels.cuda.attention`.
"""

from __future__ import annotations

import numba
import torch

from tideflow.kernels.checks import check_index


def reshape_and_cache_ref(k, v, k_cache, v_cache, slot_mapping) -> None:
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    k_cache.index_copy_(0, slots, k[keep])
    v_cache.index_copy_(0, slots, v[keep])


@numba.njit(cache=True)
def _reshape_and_cache_cpu(k, v, k_cache, v_cache, slot_mapping):  # pragma: no cover (jitted)
    heads, dim = k.shape[1], k.shape[2]
    for t in range(k.shape[0]):
        slot = slot_mapping[t]
        if slot < 0:
            continue
        for h in range(heads):
            for d in range(dim):
                k_cache[slot, h, d] = k[t, h, d]
                v_cache[slot, h, d] = v[t, h, d]


def reshape_and_cache(k, v, k_cache, v_cache, slot_mapping) -> None:
    """k, v [T, Hkv, D] (any strides); k_cache, v_cache [slots, Hkv, D] contiguous; slot_mapping [T]."""
    name = "reshape_and_cache"
    if k.dim() != 3 or k.shape != v.shape:
        raise ValueError(f"{name}: k and v must share one [tokens, kv_heads, head_dim] shape, "
                         f"got {tuple(k.shape)} and {tuple(v.shape)}")
    if k_cache.dim() != 3 or k_cache.shape != v_cache.shape or k_cache.shape[1:] != k.shape[1:]:
        raise ValueError(f"{name}: the caches must be [slots, {k.shape[1]}, {k.shape[2]}], "
                         f"got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError(f"{name}: the cache must be contiguous")
    if not (k.dtype == v.dtype == k_cache.dtype == v_cache.dtype):
        raise ValueError(f"{name}: k, v and the cache must share a dtype, got {k.dtype}, {v.dtype}, {k_cache.dtype}")
    if not (k.device == v.device == k_cache.device == v_cache.device):
        raise ValueError(f"{name}: k, v and the cache must be on one device")
    check_index(name, "slot_mapping", slot_mapping, (k.shape[0],), k.device)
    if k.is_cuda:
        from tideflow.kernels.cuda.attention import reshape_and_cache_cuda

        reshape_and_cache_cuda(k, v, k_cache, v_cache, slot_mapping)
        return
    if k.dtype in (torch.float16, torch.bfloat16):  # numba has no half types on CPU
        reshape_and_cache_ref(k, v, k_cache, v_cache, slot_mapping)
        return
    if k.shape[0] and int(slot_mapping.max()) >= k_cache.shape[0]:
        raise ValueError(f"{name}: a slot is past the cache's {k_cache.shape[0]} slots")
    _reshape_and_cache_cpu(k.numpy(), v.numpy(), k_cache.numpy(), v_cache.numpy(), slot_mapping.numpy())


def bench_cases() -> list[tuple[str, object, object]]:
    """(name, kernel, reference): a 2048-token step's K/V (8 KV heads of 128, strided views as
    transformers hands them over) into a pool of 64k slots, float32."""
    gen = torch.Generator().manual_seed(0)
    tokens, heads, dim, slots = 2048, 8, 128, 65536
    k = torch.randn(heads, tokens, dim, generator=gen).transpose(0, 1)
    v = torch.randn(heads, tokens, dim, generator=gen).transpose(0, 1)
    k_cache, v_cache = torch.zeros(slots, heads, dim), torch.zeros(slots, heads, dim)
    slot_mapping = torch.randperm(slots, generator=gen)[:tokens]
    args = (k, v, k_cache, v_cache, slot_mapping)
    return [(f"reshape_and_cache {tokens} tokens", lambda: reshape_and_cache(*args), lambda: reshape_and_cache_ref(*args))]
