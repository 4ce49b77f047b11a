"""numba.cuda pack step of `tideflow.kernels.arrow_pack`: the Arrow buffers are copied to the
device once each (offsets, values, per-row starts, cu_seqlens), then one thread per output
token finds its row by binary search over cu_seqlens and writes its id and position. Reading
the Arrow buffers stays on the host: they live in host memory."""

from __future__ import annotations

import warnings

from numba import cuda

THREADS = 256


@cuda.jit(cache=True)
def _pack_kernel(offsets, values, starts, cu, input_ids, positions):  # pragma: no cover (device code)
    i = cuda.grid(1)
    if i >= input_ids.shape[0]:
        return
    lo, hi = 0, starts.shape[0]  # the row r with cu[r] <= i < cu[r + 1]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if cu[mid] <= i:
            lo = mid
        else:
            hi = mid
    pos = starts[lo] + i - cu[lo]
    positions[i] = pos
    input_ids[i] = values[offsets[lo] + pos]


def launch_pack(offsets, values, starts, cu, input_ids, positions, stream=0) -> None:
    """Arrays numba.cuda accepts (device arrays, or numpy in the simulator)."""
    blocks = max(1, -(-input_ids.shape[0] // THREADS))
    _pack_kernel[blocks, THREADS, stream](offsets, values, starts, cu, input_ids, positions)


def pack_cuda(offsets, values, starts, cu, device):
    """Host numpy buffers, already checked by `tideflow.kernels.arrow_pack.pack_tokens` ->
    PackedTokens on the CUDA `device`."""
    import torch

    from tideflow.kernels.arrow_pack import PackedTokens
    from tideflow.kernels.cuda.interop import current_stream, device_array, on_device

    def upload(a):
        with warnings.catch_warnings():  # Arrow's buffers are read-only; we only copy from them
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(a).to(device)

    total = int(cu[-1])
    out = PackedTokens(
        torch.empty(total, dtype=torch.int64, device=device),
        torch.empty(total, dtype=torch.int64, device=device),
        upload(cu),
    )
    inputs = [upload(a) for a in (offsets, values, starts)]
    if total:
        arrays = [device_array(t) for t in (*inputs, out.cu_seqlens, out.input_ids, out.positions)]
        with on_device(device):
            launch_pack(*arrays, stream=current_stream(device))
    return out
