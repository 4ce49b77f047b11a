"""The elementwise work between a decoder layer's matmuls, fused: one call where torch takes
eight to ten small ops, each a dispatch, an allocation and a pass over memory.

- `add_rms_norm(h, delta, weight, eps) -> normed`: the residual add `h += delta` (in place)
  and the next RMSNorm of the sum (statistics in float32, as transformers' Llama RMSNorm).
- `rope_and_cache(qkv, cos, sin, heads, kv_heads, k_cache, v_cache, slot_mapping)`: rotary
  embedding of q and k inside the fused qkv projection output (in place), then the step's
  k and v rows written to their cache slots (a negative slot skips the row).

Both have torch references (`*_ref`) computing the same formulas op by op; the numba kernels
are for float32 on CPU, parallel over rows. Rounding is torch's: a product then a sum, no
fused multiply-add (no `fastmath`), so results match the references to the last bit except
where a sum's order differs (the norm's sum of squares).
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from tideflow.kernels.checks import check_index


# -- residual add + RMSNorm -----------------------------------------------------------------------
def add_rms_norm_ref(h: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h += delta
    x = h.to(torch.float32)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(h.dtype)


@numba.njit(cache=True)
def _add_rms_norm_cpu(h, delta, weight, eps, out):  # pragma: no cover (jitted)
    rows, dim = h.shape
    for r in range(rows):
        total = np.float32(0)
        for j in range(dim):
            x = h[r, j] + delta[r, j]
            h[r, j] = x
            total += x * x
        scale = np.float32(1) / np.sqrt(total / np.float32(dim) + eps)
        for j in range(dim):
            out[r, j] = weight[j] * (h[r, j] * scale)


def add_rms_norm(h: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """h, delta [T, hidden] (h contiguous, updated in place); weight [hidden]. Returns the
    normalised rows [T, hidden]. float32 CPU tensors take the numba kernel, others the reference."""
    if h.dim() != 2 or delta.shape != h.shape or weight.shape != h.shape[1:]:
        raise ValueError(f"add_rms_norm: expected h and delta [T, hidden] and weight [hidden], got "
                         f"{tuple(h.shape)}, {tuple(delta.shape)}, {tuple(weight.shape)}")
    if not _numba_float32(h, delta, weight) or not h.is_contiguous():
        return add_rms_norm_ref(h, delta, weight, eps)
    out = torch.empty_like(h)
    _add_rms_norm_cpu(h.numpy(), delta.numpy(), weight.numpy(), np.float32(eps), out.numpy())
    return out


# -- rotary embedding + cache write ---------------------------------------------------------------
def rope_and_cache_ref(qkv, cos, sin, heads: int, kv_heads: int, k_cache, v_cache, slot_mapping) -> None:
    tokens, dim = qkv.shape[0], cos.shape[-1]
    qk = qkv[:, : (heads + kv_heads) * dim].view(tokens, heads + kv_heads, dim)
    half = dim // 2
    rotated = qk * cos[:, None] + torch.cat((-qk[..., half:], qk[..., :half]), dim=-1) * sin[:, None]
    qk.copy_(rotated)
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    k_cache.index_copy_(0, slots, qk[keep, heads:])
    v_cache.index_copy_(0, slots, qkv[keep, (heads + kv_heads) * dim :].reshape(-1, kv_heads, dim))


@numba.njit(cache=True)
def _rope_and_cache_cpu(qkv, cos, sin, heads, kv_heads, k_cache, v_cache, slot_mapping):  # pragma: no cover (jitted)
    tokens = qkv.shape[0]
    dim = cos.shape[1]
    half = dim // 2
    v_start = (heads + kv_heads) * dim
    for t in range(tokens):
        for h in range(heads + kv_heads):
            base = h * dim
            for i in range(half):
                x1 = qkv[t, base + i]
                x2 = qkv[t, base + half + i]
                qkv[t, base + i] = x1 * cos[t, i] + (-x2) * sin[t, i]
                qkv[t, base + half + i] = x2 * cos[t, half + i] + x1 * sin[t, half + i]
        slot = slot_mapping[t]
        if slot < 0:
            continue
        for h in range(kv_heads):
            for d in range(dim):
                k_cache[slot, h, d] = qkv[t, (heads + h) * dim + d]
                v_cache[slot, h, d] = qkv[t, v_start + h * dim + d]


def rope_and_cache(qkv, cos, sin, heads: int, kv_heads: int, k_cache, v_cache, slot_mapping) -> None:
    """qkv [T, (heads + 2 * kv_heads) * D] (contiguous; q and k rotated in place); cos, sin
    [T, D] (transformers' layout: both halves of each row); k_cache, v_cache [slots, kv_heads, D]
    contiguous; slot_mapping [T] int64."""
    name = "rope_and_cache"
    tokens, dim = qkv.shape[0], cos.shape[-1]
    if qkv.dim() != 2 or qkv.shape[1] != (heads + 2 * kv_heads) * dim or dim % 2:
        raise ValueError(f"{name}: qkv must be [T, {(heads + 2 * kv_heads)} * {dim}], got {tuple(qkv.shape)}")
    if cos.shape != (tokens, dim) or sin.shape != cos.shape:
        raise ValueError(f"{name}: cos and sin must be [{tokens}, {dim}], got {tuple(cos.shape)} and {tuple(sin.shape)}")
    if k_cache.shape != v_cache.shape or k_cache.dim() != 3 or tuple(k_cache.shape[1:]) != (kv_heads, dim):
        raise ValueError(f"{name}: the caches must be [slots, {kv_heads}, {dim}], got {tuple(k_cache.shape)}")
    check_index(name, "slot_mapping", slot_mapping, (tokens,), qkv.device)
    if tokens and int(slot_mapping.max()) >= k_cache.shape[0]:
        raise ValueError(f"{name}: a slot is past the cache's {k_cache.shape[0]} slots")
    fast = _numba_float32(qkv, cos, sin, k_cache, v_cache)
    if not fast or not all(x.is_contiguous() for x in (qkv, cos, sin, k_cache, v_cache)):
        rope_and_cache_ref(qkv, cos, sin, heads, kv_heads, k_cache, v_cache, slot_mapping)
        return
    _rope_and_cache_cpu(qkv.numpy(), cos.numpy(), sin.numpy(), heads, kv_heads, k_cache.numpy(), v_cache.numpy(),
                        slot_mapping.numpy())


def _numba_float32(*tensors: torch.Tensor) -> bool:
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
