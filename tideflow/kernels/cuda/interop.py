"""torch <-> numba.cuda: zero-copy device arrays, the tensors' device and torch's stream.

Kernels are launched on the stream torch is using on the tensors' device, so they are ordered
with the surrounding torch work without a device-wide synchronisation."""

from __future__ import annotations

import torch
from numba import cuda


def device_array(t: torch.Tensor):
    """A numba view of a CUDA tensor's memory (no copy). No sync: we launch on torch's stream."""
    return cuda.as_cuda_array(t.detach(), sync=False)


def on_device(device: torch.device):
    """Context manager making `device` numba's current GPU (the views above belong to it)."""
    return cuda.gpus[device.index if device.index is not None else torch.cuda.current_device()]


def current_stream(device: torch.device):
    """torch's current stream on `device`, as a numba stream."""
    return cuda.external_stream(torch.cuda.current_stream(device).cuda_stream)
