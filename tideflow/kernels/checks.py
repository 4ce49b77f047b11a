"""Argument checks shared by the kernels' entry points.

A kernel reads raw memory: a wrong dtype, shape or stride there is a silent wrong answer or a
crash, not an exception. Every entry point therefore checks its tensors before it launches and
raises ValueError naming the function and the argument.
"""

from __future__ import annotations

import torch

from tideflow.config import KERNEL_BACKENDS as BACKENDS  # "auto": the kernel for the device; "torch": the reference


def check_backend(fn: str, backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"{fn}: backend must be one of {BACKENDS}, got {backend!r}")


def check_tensor(
    fn: str,
    name: str,
    t,
    *,
    shape: tuple[int | None, ...],
    dtypes: tuple[torch.dtype, ...] | None,
    device: torch.device | None,
    contiguous: bool = True,
) -> None:
    """`t` is a tensor of `shape` (None: any size there) with one of `dtypes` (None: any), on
    `device` (None: any; pass the first input's device for the others) and, when `contiguous`,
    densely packed in row-major order."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != len(shape) or any(want is not None and got != want for got, want in zip(t.shape, shape)):
        want = ", ".join("*" if s is None else str(s) for s in shape)
        raise ValueError(f"{fn}: {name} must have shape ({want}{',' if len(shape) == 1 else ''}), got {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise ValueError(f"{fn}: {name} must be {' or '.join(str(d) for d in dtypes)}, got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{fn}: {name} is on {t.device} but the inputs are on {device}")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{fn}: {name} must be contiguous, got strides {t.stride()}")


FLOAT_DTYPES = (torch.float32, torch.float64)  # what the CPU kernels compute in
GPU_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_cache(name: str, k_blocks: torch.Tensor, v_blocks: torch.Tensor) -> None:
    """K/V blocks: [num_blocks, block_size, kv_heads, head_dim], equal shapes, contiguous."""
    if k_blocks.dim() != 4 or k_blocks.shape != v_blocks.shape:
        raise ValueError(f"{name}: K/V blocks must share one [blocks, block_size, kv_heads, head_dim] shape, "
                         f"got {tuple(k_blocks.shape)} and {tuple(v_blocks.shape)}")
    if not (k_blocks.is_contiguous() and v_blocks.is_contiguous()):
        raise ValueError(f"{name}: the cache must be contiguous")


def check_query(name: str, q: torch.Tensor, k_blocks: torch.Tensor) -> None:
    """q: [rows, heads, head_dim] in the cache's dtype, heads a multiple of the KV heads (GQA)."""
    if q.dim() != 3:
        raise ValueError(f"{name}: q must be [rows, heads, head_dim], got {tuple(q.shape)}")
    heads, dim = q.shape[1], q.shape[2]
    if k_blocks.shape[3] != dim or heads % k_blocks.shape[2]:
        raise ValueError(f"{name}: head_dim {dim} / heads {heads} do not fit KV heads of shape {tuple(k_blocks.shape)}")
    allowed = GPU_DTYPES if q.is_cuda else FLOAT_DTYPES
    if q.dtype != k_blocks.dtype or q.dtype not in allowed:
        names = " or ".join(str(d).removeprefix("torch.") for d in allowed)
        raise ValueError(f"{name}: q and cache must share {names}, got {q.dtype} and {k_blocks.dtype}")
    if q.device != k_blocks.device:
        raise ValueError(f"{name}: q is on {q.device} but the cache is on {k_blocks.device}")


def check_index(name: str, what: str, t: torch.Tensor, shape: tuple[int, ...], device: torch.device) -> None:
    """An integer index tensor (block tables, lengths, slots) of the given shape on the given device."""
    if t.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name}: {what} must be int32 or int64, got {t.dtype}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name}: {what} must have shape {shape}, got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name}: {what} is on {t.device}, expected {device}")


def check_window(name: str, window: int) -> int:
    if window < 0:
        raise ValueError(f"{name}: window must be >= 0 (0: no sliding window), got {window}")
    return int(window)
