"""The `tideflow` attention functions for `transformers.AttentionInterface`.

transformers calls one once per layer with q/k/v of a packed, padding-free batch
(`[1, heads, total_tokens, head_dim]`: every sequence of the step concatenated). It writes
the step's K/V into the paged cache at the slot mapping, then attends each sequence over its
own block table. The per-step metadata arrives as the `tideflow_meta` keyword of the model
call, which transformers forwards to every attention layer; a layer's sliding window arrives
as its `sliding_window` keyword.

Rows of a step come in three kinds, each with its own path:
- decode rows (one query): `paged_decode`, all rows in one call (the torch reference pads
  each group to its longest context, so it gets small groups sorted by length);
- prefill rows with a cached context (a later chunk, or a prefix-cache hit): `paged_prefill`
  over the blocks, all such rows packed in one call;
- fresh prompts (nothing cached): dense causal attention over the step's own K/V, the same
  for both backends: nothing needs reading back from the cache, and SDPA's blocked CPU kernel
  is the fastest way to compute it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from tideflow.runtime.engine.core.block_manager import RELEASED

ATTENTION_NAME = "tideflow"
DEFAULT_BACKEND = "auto"
_CPU_DTYPES = (torch.float32, torch.float64)  # what the numba kernels compute in


@dataclass(slots=True)
class PagedKVCache:
    """K and V slots of every layer: [num_layers, num_blocks * block_size, kv_heads, head_dim] each."""

    k: torch.Tensor
    v: torch.Tensor
    block_size: int

    @classmethod
    def allocate(cls, num_layers, num_blocks, block_size, kv_heads, head_dim, dtype, device) -> "PagedKVCache":
        shape = (num_layers, num_blocks * block_size, kv_heads, head_dim)
        return cls(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device), block_size)

    def blocks(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's cache viewed as [num_blocks, block_size, kv_heads, head_dim]."""
        k, v = self.k[layer], self.v[layer]
        shape = (-1, self.block_size, k.shape[-2], k.shape[-1])
        return k.view(shape), v.view(shape)

    def read(self, block_table: list[int], num_tokens: int) -> tuple[np.ndarray, np.ndarray]:
        """The K and V of a sequence's first `num_tokens` tokens: [layers, tokens, kv_heads, head_dim]
        each; zeros where the blocks were released (outside the sliding window, never read again)."""
        slots, live = self._slots(block_table, num_tokens)
        k = self.k[:, slots].cpu().numpy()
        v = self.v[:, slots].cpu().numpy()
        if not live.all():
            k[:, ~live] = 0
            v[:, ~live] = 0
        return k, v

    def write(self, block_table: list[int], k: np.ndarray, v: np.ndarray) -> None:
        """Write K/V taken by `read` (possibly from another cache) into a sequence's blocks."""
        slots, live = self._slots(block_table, k.shape[1])
        slots = slots[torch.from_numpy(live).to(slots.device)]
        self.k[:, slots] = torch.from_numpy(np.asarray(k)[:, live]).to(self.k.device, self.k.dtype)
        self.v[:, slots] = torch.from_numpy(np.asarray(v)[:, live]).to(self.v.device, self.v.dtype)

    def _slots(self, block_table: list[int], num_tokens: int) -> tuple[torch.Tensor, np.ndarray]:
        """Cache slots of the first `num_tokens` positions, and which of them sit in live blocks."""
        pos = np.arange(num_tokens)
        blocks = np.asarray(block_table, dtype=np.int64)[pos // self.block_size]
        live = blocks != RELEASED
        slots = np.where(live, blocks * self.block_size + pos % self.block_size, 0)
        return torch.from_numpy(slots).to(self.k.device), live


@dataclass(slots=True)
class DecodeGroup:
    token_idx: torch.Tensor  # [rows] int64: packed index of each row's query token
    block_tables: torch.Tensor  # [rows, blocks] int64: enough blocks for the group's longest context, padded with 0
    context_lens: torch.Tensor  # [rows] int64: tokens attended (cached + this one)


@dataclass(slots=True)
class PagedPrefill:
    """Prefill rows that attend to a cached context, packed in row order."""

    token_idx: torch.Tensor  # [tokens] int64: packed index of each of their query tokens
    block_tables: torch.Tensor  # [rows, blocks] int64
    cu_seqlens_q: torch.Tensor  # [rows + 1] int64: query rows of row r are cu[r]:cu[r+1] of token_idx
    context_lens: torch.Tensor  # [rows] int64: cached + new tokens


@dataclass(slots=True)
class AttentionMetadata:
    """Where each token of the packed batch belongs."""

    kv_cache: PagedKVCache
    slot_mapping: torch.Tensor  # [num_tokens] int64: token -> cache slot (block * block_size + offset)
    decode_groups: list[DecodeGroup]  # rows sorted by context length
    paged_prefill: PagedPrefill | None  # chunks and prefix hits
    fresh_prefills: list[tuple[int, int]]  # (token start, length) of prompts with nothing cached


@dataclass(frozen=True, slots=True)
class AttentionKernels:
    """The three operations of one backend (see `tideflow.kernels` for their signatures)."""

    write: Callable  # (k, v, k_cache, v_cache, slot_mapping) -> None
    decode: Callable  # (q, k_blocks, v_blocks, block_tables, context_lens, scale, window) -> out
    prefill: Callable  # (q, k_blocks, v_blocks, block_tables, cu_seqlens_q, context_lens, scale, window) -> out
    decode_group_rows: int | None  # decode rows per call, sorted by context (None: all at once)


def _fresh_prefill(q, k, v, start: int, length: int, scale: float, window: int) -> torch.Tensor:
    qp, kp, vp = (x[start : start + length].transpose(0, 1) for x in (q, k, v))  # [H, n, D]
    gqa = q.shape[1] != k.shape[1]
    if window and window < length:
        pos = torch.arange(length, device=q.device)
        mask = (pos[None, :] <= pos[:, None]) & (pos[None, :] > pos[:, None] - window)
        out = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask, scale=scale, enable_gqa=gqa)
    else:
        out = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, scale=scale, enable_gqa=gqa)
    return out.transpose(0, 1)


def make_attend(kernels: AttentionKernels, fallback: AttentionKernels):
    """`attend(q, k, v, layer, meta, scaling, window) -> out`, all `[T, heads, head_dim]`:
    write the step's K/V into layer `layer` of the paged cache, then attend every row of the
    packed batch. Runs `kernels`, or `fallback` for half types on CPU, where the numba kernels
    cannot compute (numba has no half types)."""

    def attend(q, k, v, layer: int, meta: AttentionMetadata, scaling: float, window: int, cached: bool = False):
        ops = fallback if q.device.type == "cpu" and q.dtype not in _CPU_DTYPES else kernels
        cache = meta.kv_cache
        if not cached:  # `cached`: the caller wrote k and v into the cache already
            ops.write(k, v, cache.k[layer], cache.v[layer], meta.slot_mapping)
        k_blocks, v_blocks = cache.blocks(layer)
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        for group in meta.decode_groups:
            out[group.token_idx] = ops.decode(
                q[group.token_idx], k_blocks, v_blocks, group.block_tables, group.context_lens, scaling, window
            )
        if (pp := meta.paged_prefill) is not None:
            out[pp.token_idx] = ops.prefill(
                q[pp.token_idx], k_blocks, v_blocks, pp.block_tables, pp.cu_seqlens_q, pp.context_lens, scaling, window
            )
        for start, length in meta.fresh_prefills:
            out[start : start + length] = _fresh_prefill(q, k, v, start, length, scaling, window)
        return out

    return attend


def make_attention(kernels: AttentionKernels, fallback: AttentionKernels):
    """The attention function transformers calls per layer, over `make_attend`."""
    attend = make_attend(kernels, fallback)

    def attention(
        module, query, key, value, attention_mask, scaling=None, dropout=0.0, sliding_window=None, softcap=None, **kwargs
    ):
        if softcap is not None:  # silently dropping it would change every score (Gemma 2)
            raise ValueError(
                f"{type(module).__name__} asks for attention logit soft-capping (softcap={softcap}), "
                "which tideflow's paged attention does not compute"
            )
        q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # [T, heads, D]
        out = attend(q, k, v, module.layer_idx, kwargs["tideflow_meta"], scaling, int(sliding_window or 0))
        return out.unsqueeze(0), None  # [1, T, H, D]

    return attention


def _reference_kernels() -> AttentionKernels:
    from tideflow.kernels.cache_write import reshape_and_cache_ref
    from tideflow.kernels.paged_decode import paged_decode_ref
    from tideflow.kernels.paged_prefill import paged_prefill_ref

    return AttentionKernels(reshape_and_cache_ref, paged_decode_ref, paged_prefill_ref, decode_group_rows=8)


def _tideflow_kernels() -> AttentionKernels:
    from tideflow.kernels.cache_write import reshape_and_cache
    from tideflow.kernels.paged_decode import paged_decode
    from tideflow.kernels.paged_prefill import paged_prefill

    return AttentionKernels(reshape_and_cache, paged_decode, paged_prefill, decode_group_rows=None)


# kernel_backend -> its kernels: "auto" runs tideflow's kernels for the device, "torch" their references
BACKENDS = {"auto": _tideflow_kernels, "torch": _reference_kernels}


def attention_kernels(backend: str) -> AttentionKernels:
    if backend not in BACKENDS:
        raise ValueError(f"kernel_backend must be one of {sorted(BACKENDS)}, got {backend!r}")
    return BACKENDS[backend]()


def attend_function(backend: str = DEFAULT_BACKEND):
    """The backend's `attend` (see `make_attend`), for model code that calls attention directly."""
    return make_attend(attention_kernels(backend), fallback=_reference_kernels())


def register_attention(backend: str = DEFAULT_BACKEND) -> str:
    """Register the backend's attention function with transformers; returns the name to load
    models with (`tideflow` for the default backend, `tideflow-<backend>` for the others)."""
    from transformers import AttentionInterface

    kernels = attention_kernels(backend)
    name = ATTENTION_NAME if backend == DEFAULT_BACKEND else f"{ATTENTION_NAME}-{backend}"
    AttentionInterface.register(name, make_attention(kernels, fallback=_reference_kernels()))
    return name
